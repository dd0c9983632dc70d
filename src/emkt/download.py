"""Robust download and safe extraction of the EMPIAR archives.

The archives are tens of GB served over HTTPS, so a transfer is expected to be
cut now and then: downloads go to ``<dest>.part``, resume with HTTP Range
requests, retry with exponential backoff, and only become ``dest`` once their
size (and optional checksum / zip integrity) is verified. Extraction validates
every member before writing anything and is idempotent, so a crashed or
repeated run converges to the same tree.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import ssl
import stat
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from . import __version__
from .files import atomic_path

log = logging.getLogger(__name__)

USER_AGENT = f"emkt/{__version__}"
# Where a wrong URL comes from, so a 404 tells the user what to fix.
CONFIG_HINT = "check the config key data.empiar.url_base and the archive's file name"
MAX_BACKOFF_S = 60.0
_HASH_CHUNK = 1 << 20
_CHECKSUM_RE = re.compile(r"^(sha256|md5):([0-9a-fA-F]+)$")
_DIGEST_LEN = {"sha256": 64, "md5": 32}
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or at once for a client error)."""


class ArchiveError(RuntimeError):
    """A zip archive is corrupt or unsafe to extract."""


class _Transient(Exception):
    """A failed attempt worth retrying; wraps the underlying cause."""

    def __init__(self, cause: BaseException | str, retry_after_s: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        cause = self.cause
        if isinstance(cause, str):
            return cause
        text = str(cause)
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class _Restart(Exception):
    """The part file cannot be resumed; it was removed and the next request starts at byte 0."""


def archive_url(base: str, entry: str | int, file: str) -> str:
    """URL of ``file`` in EMPIAR entry ``entry`` under ``base``."""
    return f"{base.rstrip('/')}/{entry}/{file.lstrip('/')}"


def _parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    if checksum is None:
        return None
    match = _CHECKSUM_RE.match(checksum.strip()) if isinstance(checksum, str) else None
    if match is None or len(match.group(2)) != _DIGEST_LEN[match.group(1)]:
        raise ValueError(
            f"checksum {checksum!r} is not of the form 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'"
        )
    return match.group(1), match.group(2).lower()


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) of a Content-Range header; None where absent or '*'."""
    if not value:
        return None, None
    match = _CONTENT_RANGE_RE.match(value)
    if match is None:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _quarantine(part: Path, corrupt: Path) -> None:
    # Keep the bad bytes for inspection, but out of the resume path: a rerun starts afresh.
    os.replace(part, corrupt)


def _open(url: str, start: int, timeout_s: float):
    """Send the request; return the response, or raise _Transient, DownloadError, or HTTPError for a 416."""
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        # 416 is handled by the caller, which knows the part file.
        if exc.code == 416 and start > 0:
            raise
        exc.close()
        reason = exc.reason or http.client.responses.get(exc.code, "")
        if exc.code == 429 or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {reason}", _retry_after(exc.headers)) from exc
        if exc.code == 403:
            raise DownloadError(f"{url}: HTTP 403 {reason} — access denied; {CONFIG_HINT}") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {reason} — {CONFIG_HINT}") from exc
    except urllib.error.URLError as exc:
        # A certificate problem will not fix itself by waiting.
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"{url}: TLS certificate verification failed: {exc.reason}") from exc
        raise _Transient(exc.reason if isinstance(exc.reason, BaseException) else exc) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(exc) from exc


def _attempt(url: str, part: Path, received: list[int], *, timeout_s: float, chunk_bytes: int, desc: str) -> None:
    """One request: append to (or restart) ``part``; return only when it holds the whole file.

    Bytes written are added to ``received[0]``, so the caller can tell progress from a dead attempt.
    """
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start, timeout_s)
    except urllib.error.HTTPError as exc:  # only a 416 to a range request gets here
        exc.close()
        _, total = _parse_content_range(exc.headers.get("Content-Range"))
        if total is not None and total == start:
            log.info("%s: the partial file already holds all %d bytes", desc, total)
            return
        log.info("%s: server refused the range from byte %d (size %s); restarting from zero", desc, start, total)
        part.unlink(missing_ok=True)
        raise _Restart from exc

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        if status == 206:
            offset, total = _parse_content_range(response.headers.get("Content-Range"))
            if offset != start:
                # The server answered another range than the one asked for: appending would corrupt the file.
                if start == 0:
                    raise _Transient(f"server answered a range starting at byte {offset} to a plain request")
                log.info("%s: server resumed at byte %s instead of %d; restarting from zero", desc, offset, start)
                part.unlink(missing_ok=True)
                raise _Restart
            mode = "ab"
            if start:
                log.info("%s: resuming at byte %d of %s", desc, start, total)
        else:
            total = int(length) if length is not None and length.isdigit() else None
            if start:
                # The server ignored the Range header: its body starts at byte 0.
                log.info("%s: server ignored the range request; restarting from zero", desc)
            start = 0
            mode = "wb"

        with open(part, mode) as fh, tqdm(
            total=total, initial=start, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
            mininterval=10, file=sys.stderr,
        ) as bar:
            while True:
                try:
                    chunk = response.read(chunk_bytes)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(exc) from exc
                if not chunk:
                    break
                fh.write(chunk)
                received[0] += len(chunk)
                bar.update(len(chunk))

    size = part.stat().st_size
    if total is None:
        # Without a declared size (rare; chunked encoding) a clean end of stream is all we can check.
        log.info("%s: server sent no size; accepting %d bytes", desc, size)
        return
    if size < total:
        raise _Transient(f"incomplete transfer: {size} of {total} bytes")
    if size > total:
        log.info("%s: partial file is larger (%d) than the server's file (%d); restarting from zero", desc, size, total)
        part.unlink(missing_ok=True)
        raise _Transient(f"partial file larger than the server's file ({size} > {total} bytes)")


def download_file(
    url: str,
    dest: str | Path,
    *,
    checksum: str | None = None,
    retries: int = 8,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    chunk_bytes: int = 1 << 20,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.part``, resuming and retrying; return ``dest``.

    ``checksum`` is ``"sha256:<hex>"`` or ``"md5:<hex>"``; ``verify`` is called on the complete
    part file. A file failing either is moved to ``<dest>.corrupt`` and DownloadError is raised.
    """
    expected = _parse_checksum(checksum)
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    corrupt = dest.with_name(dest.name + ".corrupt")

    failures = 0
    while True:
        received = [0]
        try:
            _attempt(url, part, received, timeout_s=timeout_s, chunk_bytes=chunk_bytes, desc=dest.name)
            break
        except _Restart:
            # Not a failure: the part file is gone, so the next request carries no Range and cannot land here.
            continue
        except _Transient as exc:
            error = exc
        after = part.stat().st_size if part.exists() else 0
        # Progress means the connection works; only consecutive fruitless attempts count,
        # so a long download with sporadic cuts still finishes.
        failures = 0 if received[0] > 0 else failures + 1
        if failures >= retries:
            kept = (f"the partial file {part} ({after} bytes) is kept; rerunning resumes from there"
                    if part.exists() else "no partial file was written")
            cause = error.cause if isinstance(error.cause, BaseException) else error
            raise DownloadError(
                f"{url}: giving up after {retries} consecutive failed attempts; last error: {error}; {kept}"
            ) from cause
        delay = min(MAX_BACKOFF_S, backoff_s * 2 ** max(failures - 1, 0))
        if error.retry_after_s is not None:
            delay = min(MAX_BACKOFF_S, max(delay, error.retry_after_s))
        log.info("%s: attempt failed (%s); %d bytes so far; retrying in %.1f s (%d/%d)",
                 dest.name, error, after, delay, failures, retries)
        time.sleep(delay)

    if expected is not None:
        algorithm, want = expected
        got = _file_digest(part, algorithm)
        if got != want:
            _quarantine(part, corrupt)
            raise DownloadError(
                f"{url}: {algorithm} mismatch: expected {want}, got {got}; the file was moved to {corrupt} "
                f"and a rerun downloads it again"
            )
    if verify is not None:
        try:
            verify(part)
        except Exception as exc:
            _quarantine(part, corrupt)
            raise DownloadError(
                f"{url}: downloaded file failed verification: {exc}; the file was moved to {corrupt} "
                f"and a rerun downloads it again"
            ) from exc
    os.replace(part, dest)
    log.info("%s: download complete (%d bytes)", dest.name, dest.stat().st_size)
    return dest


def verify_zip(path: str | Path) -> None:
    """Check that ``path`` is a zip archive whose every member passes its CRC check."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            # Like ZipFile.testzip, but a broken deflate stream (zlib.error) also names its member.
            for info in archive.infolist():
                try:
                    with archive.open(info) as member:
                        while member.read(_HASH_CHUNK):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise ArchiveError(f"{path}: member {info.filename!r} is corrupt ({exc})") from exc
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{path}: not a zip archive ({exc})") from exc


def fetch_archive(url: str, dest: str | Path, checksum: str | None = None, **kw) -> Path:
    """Download a zip archive like :func:`download_file`, verifying every member's CRC before accepting it."""
    return download_file(url, dest, checksum=checksum, verify=verify_zip, **kw)


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if not name:
        return "empty member name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    # Split on both separators: an archive made on Windows may use backslashes.
    if ".." in re.split(r"[/\\]", name):
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Every member of ``archive``, after checking that none could write outside the target folder."""
    members = archive.infolist()
    for info in members:
        reason = _unsafe_reason(info)
        if reason is not None:
            raise ArchiveError(f"{archive.filename}: unsafe member {info.filename!r}: {reason}")
    return members


def _open_folder(archive: Path, member: str, parent_fd: int, parts: list[str]) -> int:
    """A descriptor of the folder ``parts`` below ``parent_fd``, creating what is missing. Every
    component is opened with O_NOFOLLOW relative to the one above it, so a symbolic link (or a
    file) already on disk at any level is refused instead of followed, and a link swapped in
    between the check and the use cannot redirect the write either."""
    fd = os.dup(parent_fd)
    try:
        for depth, part in enumerate(parts):
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:  # ELOOP: a symbolic link; ENOTDIR: a file
                what = "a symbolic link" if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode) else "not a folder"
                raise ArchiveError(f"{archive}: member {member!r}: {'/'.join(parts[:depth + 1])!r} in the "
                                   f"destination is {what}; refusing to write through it") from exc
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path, folder_fd: int, name: str) -> bool:
    """Write one file member as ``name`` in the open folder; False when it is already there.

    An existing symbolic link under the member's own name is replaced by the file (rename
    replaces the link, never its target); the ``.part`` beside it is created afresh (O_EXCL)."""
    try:
        present = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        present = None
    if present is not None and stat.S_ISREG(present.st_mode) and present.st_size == info.file_size:
        return False
    part = name + ".part"
    try:
        os.unlink(part, dir_fd=folder_fd)  # a stale part, or a link planted there: removed, not followed
    except FileNotFoundError:
        pass
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder_fd)
    try:
        # zipfile checks the CRC as the stream ends, so a bad member never reaches its name.
        with zf.open(info) as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, _HASH_CHUNK)
    except BaseException as exc:
        os.unlink(part, dir_fd=folder_fd)
        if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError)):
            raise ArchiveError(f"{archive}: member {info.filename!r} is corrupt ({exc})") from exc
        raise
    os.replace(part, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    return True


def extract_archive(archive: str | Path, dest_dir: str | Path, manifest: str | Path) -> pd.DataFrame:
    """Safely extract ``archive`` into ``dest_dir`` and write a manifest CSV (member, size).

    Idempotent: members already present with the right size are skipped, and each file is
    written through ``<target>.part``, so a rerun after a crash gives the same tree.

    Nothing is written outside ``dest_dir`` whatever is already on disk: a symbolic link (or
    a file) where a member needs a folder is an ArchiveError, and a symbolic link under a
    member's own name is replaced by the member, its target left untouched. ``dest_dir``
    itself may be a link (the user chose it).
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    rows = []
    extracted = present = 0
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{archive}: not a zip archive ({exc})") from exc
    with zf:
        # Validate everything first: an unsafe archive must leave nothing behind.
        members = safe_members(zf)
        dest_dir.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for info in tqdm(members, desc=f"extract {archive.name}", unit="file", mininterval=10, file=sys.stderr):
                parts = [part for part in info.filename.split("/") if part not in ("", ".")]
                folders = parts if info.is_dir() else parts[:-1]
                folder_fd = _open_folder(archive, info.filename, root_fd, folders)
                try:
                    if info.is_dir():
                        continue
                    rows.append({"member": info.filename, "size": info.file_size})
                    if _extract_member(zf, info, archive, folder_fd, parts[-1]):
                        extracted += 1
                    else:
                        present += 1
                finally:
                    os.close(folder_fd)
        finally:
            os.close(root_fd)
    log.info("%s: %d members extracted, %d already present", archive.name, extracted, present)
    frame = pd.DataFrame(rows, columns=["member", "size"])
    with atomic_path(manifest) as tmp:
        frame.to_csv(tmp, index=False)
    return frame
