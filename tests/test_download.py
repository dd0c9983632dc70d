"""Download and extraction against a real loopback HTTP server: cuts, resumes, errors, corrupt and unsafe zips."""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import struct
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from loopback import LoopbackServer

import emkt
from emkt import download
from emkt.download import (
    ArchiveError,
    DownloadError,
    archive_url,
    download_file,
    extract_archive,
    fetch_archive,
    safe_members,
    verify_zip,
)

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """Backoff waits are recorded, not slept, so retry tests run instantly."""
    slept: list[float] = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    return slept


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    with LoopbackServer(root) as server:
        yield server, root


@pytest.fixture
def blob(served) -> tuple[LoopbackServer, bytes, str]:
    server, root = served
    data = os.urandom(SIZE)
    (root / "blob.bin").write_bytes(data)
    return server, data, "/blob.bin"


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=1 if compression else None) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def corrupt_member(path: Path, member: str) -> None:
    """Flip bytes in the middle of a member's stored data; the archive keeps its size and structure."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    data_start = info.header_offset + 30 + name_len + extra_len
    middle = data_start + info.compress_size // 2
    for i in range(middle, middle + 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_archive_url():
    base = "https://ftp.ebi.ac.uk/empiar/world_availability/"
    assert archive_url(base, 11037, "/data/cem_mitolab.zip") == (
        "https://ftp.ebi.ac.uk/empiar/world_availability/11037/data/cem_mitolab.zip")


def test_cut_transfer_resumes_with_range(blob, tmp_path):
    server, data, path = blob
    cut = 1_234_567
    server.cut_after[path] = cut
    dest = tmp_path / "out" / "blob.bin"
    assert download_file(server.url + path, dest, chunk_bytes=1 << 16) == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("blob.bin.part").exists()
    assert server.requests == [(path, None), (path, f"bytes={cut}-")]


def test_existing_part_file_is_resumed(blob, tmp_path):
    server, data, path = blob
    dest = tmp_path / "blob.bin"
    half = len(data) // 2
    dest.with_name("blob.bin.part").write_bytes(data[:half])
    download_file(server.url + path, dest)
    assert dest.read_bytes() == data
    assert server.requests == [(path, f"bytes={half}-")]


def test_complete_part_file_is_accepted_after_416(blob, tmp_path):
    server, data, path = blob
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(data)
    download_file(server.url + path, dest, checksum="sha256:" + hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.requests == [(path, f"bytes={len(data)}-")]


def test_oversized_part_file_restarts(blob, tmp_path):
    server, data, path = blob
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(data + b"junk")
    download_file(server.url + path, dest)
    assert dest.read_bytes() == data
    assert server.requests == [(path, f"bytes={len(data) + 4}-"), (path, None)]


def test_server_ignoring_range_restarts_from_zero(blob, tmp_path):
    server, data, path = blob
    server.ignore_range.add(path)
    dest = tmp_path / "blob.bin"
    # Stale junk in the part file must not survive: the 200 body starts at byte 0.
    dest.with_name("blob.bin.part").write_bytes(b"x" * 1000)
    download_file(server.url + path, dest)
    assert dest.read_bytes() == data
    assert server.requests == [(path, "bytes=1000-")]


def test_existing_dest_is_returned_without_network(blob, tmp_path):
    server, _, path = blob
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"already here")
    assert download_file(server.url + path, dest) == dest
    assert dest.read_bytes() == b"already here"
    assert server.requests == []


@pytest.mark.parametrize("code, words", [(404, "404"), (403, "access denied")])
def test_client_errors_fail_at_once(blob, tmp_path, code, words, no_sleep):
    server, _, path = blob
    server.status[path] = code
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(server.url + path, dest)
    message = str(err.value)
    assert str(code) in message and words in message
    assert "data.empiar.url_base" in message and server.url + path in message
    assert len(server.requests) == 1 and no_sleep == []
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_client_error_keeps_existing_part(blob, tmp_path):
    server, data, path = blob
    server.status[path] = 404
    part = tmp_path / "blob.bin.part"
    part.write_bytes(data[:100])
    with pytest.raises(DownloadError):
        download_file(server.url + path, tmp_path / "blob.bin")
    assert part.read_bytes() == data[:100]


def test_server_errors_retry_then_fail(blob, tmp_path, no_sleep):
    server, _, path = blob
    server.status[path] = 500
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(server.url + path, dest, retries=4, backoff_s=1.0)
    message = str(err.value)
    assert server.url + path in message and "500" in message and "partial file" in message
    assert len(server.requests) == 4
    assert no_sleep == [1.0, 2.0, 4.0]  # exponential backoff, none after the last attempt
    assert not dest.exists()


def test_backoff_is_capped(blob, tmp_path, no_sleep):
    server, _, path = blob
    server.status[path] = 503
    with pytest.raises(DownloadError):
        download_file(server.url + path, tmp_path / "blob.bin", retries=5, backoff_s=20.0)
    assert no_sleep == [20.0, 40.0, 60.0, 60.0]


def test_transient_errors_then_success(blob, tmp_path, monkeypatch):
    server, data, path = blob
    server.status[path] = 503
    # Clear the fault during the first backoff wait, as a recovering server would.
    monkeypatch.setattr(download.time, "sleep", lambda s: server.status.pop(path, None))
    dest = tmp_path / "blob.bin"
    download_file(server.url + path, dest)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2


def test_connection_refused_is_retried(tmp_path, no_sleep):
    with LoopbackServer(tmp_path) as server:
        url = server.url + "/gone.bin"
    # The server is stopped, so its port now refuses connections.
    with pytest.raises(DownloadError) as err:
        download_file(url, tmp_path / "gone.bin", retries=3)
    assert "no partial file" in str(err.value)
    assert len(no_sleep) == 2


def test_sporadic_cuts_do_not_exhaust_retries(blob, tmp_path, monkeypatch):
    server, data, path = blob
    step = 256 * 1024
    server.cut_after[path] = step
    # Every retry is cut again after some progress: more cuts than retries, yet the download finishes.
    monkeypatch.setattr(download.time, "sleep", lambda s: server.cut_after.__setitem__(path, step))
    dest = tmp_path / "blob.bin"
    download_file(server.url + path, dest, retries=2)
    assert dest.read_bytes() == data
    assert len(server.requests) > 2


def test_checksums(blob, tmp_path):
    server, data, path = blob
    url = server.url + path
    good = tmp_path / "good.bin"
    download_file(url, good, checksum="sha256:" + hashlib.sha256(data).hexdigest().upper())
    assert good.read_bytes() == data

    md5 = tmp_path / "md5.bin"
    download_file(url, md5, checksum="md5:" + hashlib.md5(data).hexdigest())
    assert md5.read_bytes() == data

    bad = tmp_path / "bad.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        download_file(url, bad, checksum="sha256:" + wrong)
    message = str(err.value)
    assert wrong in message and hashlib.sha256(data).hexdigest() in message
    assert "bad.bin.corrupt" in message and "rerun" in message
    assert not bad.exists() and not bad.with_name("bad.bin.part").exists()
    assert bad.with_name("bad.bin.corrupt").read_bytes() == data

    for form in ("sha1:" + "0" * 40, "sha256:xyz", "0" * 64, "md5:1234"):
        with pytest.raises(ValueError, match="sha256:<64 hex digits>"):
            download_file(url, tmp_path / "never.bin", checksum=form)
    assert not (tmp_path / "never.bin.part").exists()


def test_corrupt_zip_is_quarantined_then_refetched(served, tmp_path):
    server, root = served
    files = {"pkg/a.txt": b"alpha " * 5000, "pkg/b.bin": os.urandom(50_000), "pkg/c.txt": b"gamma " * 3000}
    good = make_zip(tmp_path / "good.zip", files, compression=zipfile.ZIP_STORED)
    bad = root / "arch.zip"
    bad.write_bytes(good.read_bytes())
    corrupt_member(bad, "pkg/b.bin")
    assert bad.stat().st_size == good.stat().st_size

    dest = tmp_path / "dl" / "arch.zip"
    with pytest.raises(DownloadError) as err:
        fetch_archive(server.url + "/arch.zip", dest)
    assert "pkg/b.bin" in str(err.value) and "CRC" in str(err.value)
    assert not dest.exists() and dest.with_name("arch.zip.corrupt").exists()
    assert not dest.with_name("arch.zip.part").exists()

    bad.write_bytes(good.read_bytes())
    fetch_archive(server.url + "/arch.zip", dest)
    assert dest.read_bytes() == good.read_bytes()


def test_verify_zip(tmp_path):
    files = {"x/one.txt": b"one " * 20000, "x/two.txt": b"two " * 20000}
    deflated = make_zip(tmp_path / "d.zip", files)
    verify_zip(deflated)
    # Damage inside a deflate stream may surface as a zlib error rather than a CRC error: still named.
    corrupt_member(deflated, "x/two.txt")
    with pytest.raises(ArchiveError, match="x/two.txt"):
        verify_zip(deflated)
    notzip = tmp_path / "n.zip"
    notzip.write_bytes(b"this is not a zip archive at all" * 10)
    with pytest.raises(ArchiveError, match="not a zip archive"):
        verify_zip(notzip)


def test_short_transfers_every_time_fail(blob, tmp_path, monkeypatch):
    server, _, path = blob
    server.cut_after[path] = 0
    # Re-arm the cut in each backoff wait, so every attempt announces the full size and sends nothing.
    monkeypatch.setattr(download.time, "sleep", lambda s: server.cut_after.__setitem__(path, 0))
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(server.url + path, dest, retries=2)
    assert f"0 of {SIZE} bytes" in str(err.value)
    assert len(server.requests) == 2
    assert not dest.exists()


# ---- extraction -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zip_cache(tmp_path_factory) -> dict:
    return {"dir": tmp_path_factory.mktemp("fixture_zip")}


@pytest.fixture
def mito_zip(shared_data: Path, zip_cache: dict) -> tuple[Path, Path]:
    """A zip of the real EM fixture (top folder cem_mitolab/), built once per module; (zip, source root)."""
    if "zip" not in zip_cache:
        path = zip_cache["dir"] / "cem_mitolab.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for file in sorted((shared_data / "cem_mitolab").rglob("*")):
                zf.write(file, file.relative_to(shared_data).as_posix())
        zip_cache["zip"] = path
    return zip_cache["zip"], shared_data


def test_extract_is_exact_and_idempotent(mito_zip, tmp_path):
    archive, source = mito_zip
    expected = files_under(source / "cem_mitolab")
    assert any(name.endswith(".tiff") and "/images/" in name for name in expected)
    out = tmp_path / "data"
    manifest = tmp_path / "meta" / "manifest.csv"

    first = extract_archive(archive, out, manifest)
    assert files_under(out / "cem_mitolab") == expected
    assert set(first["member"]) == {f"cem_mitolab/{name}" for name in expected}
    assert pd.read_csv(manifest).equals(first)

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = extract_archive(archive, out, manifest)
    assert second.equals(first) and pd.read_csv(manifest).equals(first)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes

    # A crash: one member never written, one half written, and a stray .part beside it.
    names = sorted(expected)
    (out / "cem_mitolab" / names[0]).unlink()
    half = out / "cem_mitolab" / names[1]
    content = half.read_bytes()
    half.write_bytes(content[: len(content) // 2])
    half.with_name(half.name + ".part").write_bytes(content[:100])
    third = extract_archive(archive, out, manifest)
    assert third.equals(first)
    assert files_under(out / "cem_mitolab") == expected  # no .part left either


def test_extract_rejects_corrupt_member(tmp_path):
    archive = make_zip(tmp_path / "c.zip", {"d/ok.txt": b"fine" * 100, "d/bad.txt": os.urandom(10_000)},
                       compression=zipfile.ZIP_STORED)
    corrupt_member(archive, "d/bad.txt")
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="d/bad.txt"):
        extract_archive(archive, out, tmp_path / "m.csv")
    assert not (out / "d" / "bad.txt").exists() and not (out / "d" / "bad.txt.part").exists()
    assert not (tmp_path / "m.csv").exists()


def _symlink_zip(path: Path) -> Path:
    info = zipfile.ZipInfo("pkg/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/fine.txt", b"ok")
        zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/abs.txt", "a/../../b.txt", "C:/win.txt", "..\\evil.txt",
                                    "pkg/link"])
def test_unsafe_archives_extract_nothing(tmp_path, member):
    archive = tmp_path / "unsafe.zip"
    if member == "pkg/link":
        _symlink_zip(archive)
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("pkg/fine.txt", b"ok")  # a safe member first: it must not be written either
            # writestr keeps the name verbatim (ZipFile.write would sanitise it), as a hostile archive could.
            zf.writestr(zipfile.ZipInfo(member), b"evil")
    with zipfile.ZipFile(archive) as zf:
        assert member in zf.namelist()
        with pytest.raises(ArchiveError) as err:
            safe_members(zf)
    assert repr(member) in str(err.value)

    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="unsafe member"):
        extract_archive(archive, out, tmp_path / "m.csv")
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("planted", ["pkg", "pkg/sub", "pkg/sub/fine.txt", "pkg/sub/fine.txt.part"])
def test_extraction_never_writes_through_a_symlink_already_in_the_destination(tmp_path, planted):
    """A link where a folder is needed is refused; a link under a file's own name (or its .part)
    is replaced by the file. Either way the link's target outside stays as it was."""
    archive = make_zip(tmp_path / "a.zip", {"pkg/sub/fine.txt": b"member", "pkg/other.txt": b"x"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "fine.txt").write_bytes(b"victim")  # the member's size: not mistaken for it
    out = tmp_path / "out"
    link = out / planted
    link.parent.mkdir(parents=True)
    is_folder = planted.count("/") < 2
    link.symlink_to(outside if is_folder else outside / "fine.txt")
    if is_folder:
        with pytest.raises(ArchiveError, match=rf"a.zip: member 'pkg/sub/fine.txt': '{planted}' in the destination "
                                               "is a symbolic link; refusing to write through it"):
            extract_archive(archive, out, tmp_path / "m.csv")
        assert link.is_symlink()
    else:
        extract_archive(archive, out, tmp_path / "m.csv")
        assert (out / "pkg" / "sub" / "fine.txt").read_bytes() == b"member"
        assert not (out / "pkg" / "sub" / "fine.txt").is_symlink() and not link.is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["fine.txt"]
    assert (outside / "fine.txt").read_bytes() == b"victim"


def test_fetch_and_extract_end_to_end(mito_zip, served, tmp_path):
    archive, source = mito_zip
    server, root = served
    (root / "11037" / "data").mkdir(parents=True)
    (root / "11037" / "data" / "cem_mitolab.zip").write_bytes(archive.read_bytes())
    url = archive_url(server.url, 11037, "data/cem_mitolab.zip")
    path = "/11037/data/cem_mitolab.zip"
    cut = archive.stat().st_size // 2
    server.cut_after[path] = cut

    checksum = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = fetch_archive(url, tmp_path / "dl" / "cem_mitolab.zip", checksum=checksum)
    assert server.requests == [(path, None), (path, f"bytes={cut}-")]
    out = tmp_path / "data"
    extract_archive(dest, out, tmp_path / "manifest.csv")
    assert files_under(out / "cem_mitolab") == files_under(source / "cem_mitolab")


@pytest.mark.parametrize("fault", [
    http.client.RemoteDisconnected("Remote end closed connection without response"),
    http.client.IncompleteRead(b"", 10),
    TimeoutError("timed out"),
    ConnectionResetError(104, "Connection reset by peer"),
    urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
])
def test_network_exceptions_are_retried(blob, tmp_path, monkeypatch, fault, no_sleep):
    server, data, path = blob
    real_urlopen = urllib.request.urlopen
    calls = []

    def flaky_urlopen(request, timeout):
        calls.append(request.get_header("User-agent"))
        if len(calls) == 1:
            raise fault
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(download.urllib.request, "urlopen", flaky_urlopen)
    dest = tmp_path / "blob.bin"
    download_file(server.url + path, dest)
    assert dest.read_bytes() == data
    assert calls == [f"emkt/{emkt.__version__}"] * 2 and len(no_sleep) == 1
