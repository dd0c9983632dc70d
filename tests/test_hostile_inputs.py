"""Hostile and unusual inputs, each with one documented outcome: planted together in a
CEM-MitoLab-layout folder (index_data's build_index, then the external sets' reader
load_folder_images) and in a prediction folder (predict_folder with a small memory budget).

``CASES`` is the table in docs/data.md ("Unusual and hostile inputs"); a test checks that the
doc lists exactly these rows. ``python tests/test_hostile_inputs.py`` prints the table.
"""

from __future__ import annotations

import builtins
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHAPE = (48, 64)  # most planted images: under the test's memory budget
MEMORY_MB = 0.5  # predict_folder's budget here: images over 8192 pixels are predicted in bands
NON_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 'café': not valid UTF-8, kept by Python as a surrogate


def texture(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A uint8 image with structure (smoothed noise), so predictions are not trivial."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape[:2]), 2)
    return np.rint((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)


def with_value(value: float, dtype=np.float32) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        image = texture().astype(dtype)
        image[3, 5] = value
        tifffile.imwrite(path, image)
    return plant


def tiff(array: np.ndarray, **options) -> Callable[[Path], None]:
    return lambda path: tifffile.imwrite(path, array, **options)


def png(array: np.ndarray, mode: str | None = None) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        image = Image.fromarray(array)
        (image.quantize(16) if mode == "P" else image).save(path)
    return plant


def palette_tiff(path: Path) -> None:
    Image.fromarray(texture()).quantize(16).save(path)  # Pillow writes a TIFF colour map


def folder(path: Path) -> None:
    path.mkdir()
    tifffile.imwrite(path / "inside.tif", texture())  # not searched: not --recursive, not <source>/images


def labels_mask(values: list[float], dtype, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A mask with one 6 x 6 square per value (0 elsewhere)."""
    mask = np.zeros(shape, dtype=dtype)
    for k, value in enumerate(values):
        mask[4:10, 4 + 10 * k:10 + 10 * k] = value
    return mask


@dataclass(frozen=True)
class Case:
    """One planted input: its row in the table, its file, how it is written, the mask next to
    it in the labelled folder (None: the image's own shape, with two objects), and the
    outcomes. ``index``: ok | converted: <conversion> | excluded: <reason> | not listed: <why>.
    ``predict``: ok | ok, in bands | skipped: <start of the reason> | not listed: <why> |
    '' (a mask case: nothing to predict)."""

    input: str
    file: str
    plant: Callable[[Path], None]
    index: str
    predict: str
    mask: np.ndarray | None = None
    shape: tuple[int, int] = SHAPE
    notes: tuple[str, str] = ("", "")  # appended to the table's index and predict cells


CASES = [
    Case("float image with NaN", "nan.tif", with_value(np.nan), "excluded: non_finite",
         "skipped: image has NaN or infinite values"),
    Case("float image with inf", "inf.tif", with_value(np.inf), "excluded: non_finite",
         "skipped: image has NaN or infinite values"),
    Case("constant uint8 image", "constant.tif", tiff(np.full(SHAPE, 128, np.uint8)), "ok", "ok"),
    Case("constant float image", "constant_float.tif", tiff(np.full(SHAPE, 0.5, np.float32)),
         "converted: float32->uint8 min-max", "ok"),
    Case("1 x N image (1 x 300)", "row.tif", tiff(texture((1, 300))), "ok", "ok", shape=(1, 300)),
    Case("N x 1 image (300 x 1)", "column.tif", tiff(texture((300, 1))), "ok", "ok", shape=(300, 1)),
    Case("smaller than the network input (5 x 7)", "tiny.tif", tiff(texture((5, 7))), "ok", "ok", shape=(5, 7)),
    Case("RGBA TIFF", "rgba.tif", tiff(np.dstack([texture()] * 3 + [np.full(SHAPE, 255, np.uint8)]),
                                       photometric="rgb", extrasamples=["unassalpha"]), "converted: rgb->grey", "ok"),
    Case("RGBA PNG", "rgba.png", png(np.dstack([texture()] * 3 + [np.full(SHAPE, 255, np.uint8)])),
         "not listed: index_data reads .tif/.tiff only", "ok"),
    Case("palette (indexed-colour) TIFF", "palette.tif", palette_tiff, "converted: rgb->grey", "ok"),
    Case("palette (indexed-colour) PNG", "palette.png", png(texture(), "P"),
         "not listed: index_data reads .tif/.tiff only", "ok"),
    Case("16-bit TIFF", "uint16.tif", tiff(texture().astype(np.uint16) * 257), "converted: uint16->uint8 min-max", "ok"),
    Case("signed 16-bit TIFF with negative values", "int16.tif", tiff(texture().astype(np.int16) - 128),
         "converted: int16->uint8 min-max", "ok"),
    Case("big-endian 16-bit TIFF", "big_endian.tif", tiff(texture().astype(">u2") * 257, byteorder=">"),
         "converted: uint16->uint8 min-max", "ok"),
    Case("a folder named like an image", "folder.tif", folder, "not listed: a folder, not a file",
         "not listed: a folder, not a file"),
    Case("file without read permission (emulated when the tests run as root, who reads anything)",
         "unreadable.tif", tiff(texture()), "excluded: unreadable", "skipped: unreadable TIFF ([Errno 13] Permission denied"),
    Case("file name that is not valid UTF-8 (Latin-1 'café.tif')", f"{NON_UTF8}.tif", tiff(texture()),
         "excluded: bad_name", "ok", notes=(" (rename it)", "; `predictions.csv` shows it as `caf\\xe9.tif`")),
    Case(f"TIFF over the memory budget (here 300 x 200 at `--memory-mb {MEMORY_MB}`)",
         "large.tif", tiff(texture((300, 200))), "ok", "ok, in bands", shape=(300, 200),
         notes=(" (read whole: index_data is not bounded)", "")),
    Case("compressed (zlib) image over the memory budget", "large_zlib.tif",
         tiff(texture((300, 200), seed=1), compression="zlib"), "ok", "ok, in bands", shape=(300, 200)),
    Case("PNG over the memory budget", "large.png", png(texture((300, 200))),
         "not listed: index_data reads .tif/.tiff only", "skipped: 300 x 200 pixels need more than the memory budget"),
    Case("mask of whole-number floats", "mask_float_whole.tif", tiff(texture()), "ok", "",
         mask=labels_mask([1.0, 2.0], np.float32)),
    Case("mask of non-integer floats", "mask_fractional.tif", tiff(texture()), "excluded: not_labels", "",
         mask=labels_mask([1.0, 2.5], np.float32)),
    Case("mask with negative values", "mask_negative.tif", tiff(texture()), "excluded: not_labels", "",
         mask=labels_mask([1, -1], np.int16)),
    Case("mask with values above 65,535 (70,000 and 4,000,000,000)", "mask_large_values.tif", tiff(texture()),
         "ok", "", mask=labels_mask([70_000, 4_000_000_000], np.uint32),
         notes=(" (two instances; the store renumbers the ids)", "")),
    Case("mask larger than its image (50 x 66 for 48 x 64)", "mask_larger.tif", tiff(texture()),
         "excluded: shape_mismatch", "", mask=labels_mask([1, 2], np.uint8, (50, 66))),
]
UNREADABLE = "unreadable.tif"


def docs_table() -> str:
    """The table of these cases in docs/data.md."""
    def outcome(text: str, words: dict[str, str]) -> str:
        kind, _, detail = text.partition(": ")
        return words[kind].format(detail)

    index = {"ok": "used", "converted": "used, converted: `{}`", "excluded": "excluded: `{}`",
             "not listed": "not listed ({})"}
    predict = {"ok": "predicted", "ok, in bands": "predicted in bands, the same result as whole",
               "skipped": "skipped: `{}...`", "not listed": "not listed ({})", "": "(masks are not read)"}
    lines = ["| input | `index_data` / `external_test` | `predict` |", "|---|---|---|"]
    lines += [f"| {case.input} | {outcome(case.index, index)}{case.notes[0]} | {outcome(case.predict, predict)}{case.notes[1]} |"
              for case in CASES]
    return "\n".join(lines)


def block_reading(monkeypatch, path: Path) -> None:
    """No read permission on ``path``: chmod 000, and where that does not stop this process
    (root reads anything) ``open`` refuses it as the operating system would."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    original = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == path.resolve():
            raise PermissionError(13, "Permission denied", str(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """<root>/lab/images/<file> and masks/<stem>.tif of every case (masks only for usable files)."""
    root = tmp_path_factory.mktemp("hostile_labelled")
    images, masks = root / "lab" / "images", root / "lab" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for case in CASES:
        case.plant(images / case.file)
        if not case.file.lower().endswith(".png") and case.file != "folder.tif":
            mask = case.mask if case.mask is not None else labels_mask([1, 2], np.uint8, case.shape) \
                if min(case.shape) >= 10 else np.ones(case.shape, np.uint8)
            tifffile.imwrite(masks / (Path(case.file).stem + ".tif"), mask)
    return root


@pytest.fixture(scope="module")
def indexed(labelled, tmp_path_factory):
    from _pytest.monkeypatch import MonkeyPatch

    from emkt.indexing import build_index

    with MonkeyPatch.context() as monkeypatch:
        block_reading(monkeypatch, labelled / "lab" / "images" / UNREADABLE)
        index, excluded = build_index(labelled, None)
    # both tables are written as index_data writes them, and read back as later rules do
    out = tmp_path_factory.mktemp("hostile_tables")
    index.to_csv(out / "index.csv", index=False)
    excluded.to_csv(out / "excluded.csv", index=False)
    return pd.read_csv(out / "index.csv"), pd.read_csv(out / "excluded.csv")


def test_index_data_has_one_documented_outcome_per_input(labelled, indexed):
    from emkt.data import printable

    index, excluded = indexed
    images, masks = labelled / "lab" / "images", labelled / "lab" / "masks"
    for case in CASES:
        image, mask = printable(images / case.file), printable(masks / (Path(case.file).stem + ".tif"))
        rows, bad = index[index["path"] == image], excluded[excluded["path"].isin([image, mask])]
        kind, _, detail = case.index.partition(": ")
        if kind in ("ok", "converted"):
            assert len(rows) == 1 and bad.empty, case.input
            row = rows.iloc[0]
            assert (row.status, row.conversion if isinstance(row.conversion, str) else "") == (kind, detail), case.input
            assert (row.height, row.width) == case.shape, case.input
        elif kind == "excluded":
            assert rows.empty and bad["reason"].tolist() == [detail], case.input
            assert bad["detail"].iloc[0], case.input
        else:
            assert rows.empty and bad.empty, case.input
    assert len(index) + len(excluded) == sum(c.index.split(":")[0] != "not listed" for c in CASES)


def test_index_details_name_the_file_and_the_reason(labelled, indexed):
    index, excluded = indexed
    detail = excluded.set_index("reason")["detail"]
    assert "Permission denied" in detail["unreadable"]
    assert detail["bad_name"].endswith("caf\\xe9.tif: file name is not valid UTF-8")
    assert "mask holds non-integer labels" in " ".join(excluded.loc[excluded["reason"] == "not_labels", "detail"])
    assert "(50, 66)" in detail["shape_mismatch"]
    # palette TIFF: the colours' grey, which is what Pillow makes of the same palette PNG
    row = index[index["path"].str.endswith("palette.tif")].iloc[0]
    assert row["dtype"] == "uint8" and row["conversion"] == "rgb->grey"
    large_values = index[index["path"].str.endswith("mask_large_values.tif")].iloc[0]
    assert large_values["n_instances"] == 2  # 4,000,000,000 is not wrapped onto another id


def test_too_many_hostile_files_stop_the_run_naming_them(indexed, tmp_path):
    from emkt.indexing import TooManyExcluded, check_exclusions

    index, excluded = indexed
    summary = check_exclusions(index, excluded, 0.5, tmp_path / "report.csv")  # under the limit: goes on
    assert summary.loc["labelled", "excluded"] == len(excluded)
    with pytest.raises(TooManyExcluded, match=r"nan\.tif: non_finite"):
        check_exclusions(index, excluded, 0.01, tmp_path / "report.csv")


def test_external_sets_read_every_usable_file_as_indexed(labelled, indexed):
    """index_external is build_index; evaluate_external then reads the usable rows."""
    from emkt.data import load_folder_images

    index, _ = indexed
    items = load_folder_images(index)
    assert len(items) == len(index)
    for item, row in zip(items, index.itertuples()):
        assert item["image"].shape == item["mask"].shape == (row.height, row.width), row.path
        assert np.isfinite(item["image"]).all(), row.path
        assert len(np.unique(item["instances"][item["instances"] > 0])) == row.n_instances, row.path


# --- prediction -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    import torch

    from emkt.checkpoints import SEGMENTATION_KINDS, load_model, save_model
    from emkt.models import build_student

    tiny = {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2,
            "deconv_chns": 8, "dropout_rate": 0.0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a busy machine: one thread is fastest
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hostile_model") / "student.pth"
    save_model(path, build_student(tiny, 32), "student", tiny, 32)
    yield load_model(path, SEGMENTATION_KINDS)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def predicted(student, tmp_path_factory):
    from _pytest.monkeypatch import MonkeyPatch

    from emkt.predict import predict_folder

    folder = tmp_path_factory.mktemp("hostile_predict")
    for case in CASES:
        if case.predict:
            case.plant(folder / case.file)
    out = tmp_path_factory.mktemp("hostile_predicted")
    with MonkeyPatch.context() as monkeypatch:
        block_reading(monkeypatch, folder / UNREADABLE)
        summary = predict_folder(*student, folder, out, min_size=0, memory_mb=MEMORY_MB)
    return folder, out, summary


def test_predict_has_one_documented_outcome_per_input(predicted):
    from emkt.data import printable

    from emkt.predict import output_names

    folder, out, summary = predicted
    table = pd.read_csv(out / "predictions.csv").set_index("file")
    cases = [case for case in CASES if case.predict]
    outputs = dict(zip([c.file for c in cases], output_names([Path(c.file) for c in cases])))
    for case in cases:
        kind, _, detail = case.predict.partition(": ")
        name = printable(case.file)
        if kind.startswith("ok"):
            row = table.loc[name]
            assert row["status"] == "ok" and (row["height"], row["width"]) == case.shape, case.input
            assert row["output"] == printable(outputs[case.file]), case.input
            mask_file = out / "mask" / outputs[case.file]
            with tifffile.TiffFile(mask_file) as tif:  # streamed masks are written in tiles
                assert tif.pages.first.is_tiled == (kind == "ok, in bands"), case.input
                assert tif.asarray().shape == case.shape, case.input
        elif kind == "skipped":
            assert table.loc[name, "status"].startswith(f"skipped: {detail}"), (case.input, table.loc[name, "status"])
            assert pd.isna(table.loc[name, "output"]) and not (out / "mask" / outputs[case.file]).exists()
        else:
            assert name not in table.index, case.input
    assert len(table) == sum(not c.predict.startswith("not listed") for c in cases)
    assert summary.skipped == sum(c.predict.startswith("skipped") for c in cases)


def test_predicted_pixels_are_the_documented_conversions(predicted):
    """Palette and RGBA files predict as their grey colours, big-endian as little-endian."""
    _, out, _ = predicted

    def prob(name: str) -> np.ndarray:
        return tifffile.imread(out / "probability" / name)

    # the same colours from a TIFF or a PNG, the same 16-bit pixels in either byte order
    assert np.array_equal(prob("palette.tif.tiff"), prob("palette.png.tiff"))
    assert np.array_equal(prob("rgba.tif.tiff"), prob("rgba.png.tiff"))
    assert np.array_equal(prob("big_endian.tiff"), prob("uint16.tiff"))
    # non-UTF-8 names keep their bytes on disk; the table shows them escaped
    assert os.fsencode(f"{NON_UTF8}.tiff") in os.listdir(os.fsencode(out / "mask"))


def test_docs_list_every_case():
    doc = (REPO / "docs" / "data.md").read_text()
    assert docs_table() in doc, "docs/data.md table out of date: python tests/test_hostile_inputs.py prints it"


if __name__ == "__main__":
    sys.exit(print(docs_table()))
