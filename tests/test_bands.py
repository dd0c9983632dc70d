"""Images over the memory budget (emkt.bands): the band plan reproduces MONAI's window grid,
band-wise instances equal whole-image ones, and a streamed prediction equals the whole-image
prediction exactly. Timings and peak memory of a 30,000 x 30,000 image: benchmarks/large_image.py."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from scipy import ndimage

from emkt.bands import TILE, plan_bands, window_starts, write_mask_and_instances
from emkt.checkpoints import SEGMENTATION_KINDS, load_model, save_model
from emkt.cli import main
from emkt.metrics import instances_from_probability
from emkt.models import build_student
from emkt.predict import predict_folder

TINY_STUDENT = {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2,
                "deconv_chns": 8, "dropout_rate": 0.0}
INPUT_SIZE = 32


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a busy machine: one thread is fastest
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "student.pth"
    save_model(path, build_student(TINY_STUDENT, INPUT_SIZE), "student", TINY_STUDENT, INPUT_SIZE)
    model, checkpoint = load_model(path, SEGMENTATION_KINDS)
    yield model, checkpoint, path
    torch.set_num_threads(threads)


def smooth_image(shape: tuple[int, int], seed: int = 0, dtype=np.uint16) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    return np.rint((noise - noise.min()) / np.ptp(noise) * np.iinfo(dtype).max).astype(dtype)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_window_starts_are_monais(overlap):
    for size in (1, 31, 32, 33, 56, 100, 257):
        image, roi = (max(size, 32), 40), (32, 32)  # MONAI pads images smaller than a window
        slices = dense_patch_slices(image, roi, _get_scan_interval(image, roi, 2, (overlap, overlap)))
        assert window_starts(size, 32, overlap) == sorted({s[0].start for s in slices}), size


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_bands_cover_the_image_with_exactly_the_windows_over_their_rows(overlap):
    window = 32
    for height in (33, 64, 100, 257, 1000):
        starts = window_starts(height, window, overlap)
        for max_rows in (1, 40, 60, 200, 999):
            bands = plan_bands(height, window, overlap, max_rows)
            assert bands[0].out_start == 0 and bands[-1].out_stop == height
            for band, following in zip(bands, bands[1:]):
                assert band.out_stop == following.out_start < following.out_stop
            for band in bands:
                inside = [s for s in starts if band.start <= s and s + window <= band.stop]
                assert band.start == inside[0] and band.stop == inside[-1] + window  # whole windows only
                assert window_starts(band.stop - band.start, window, overlap) == [s - band.start for s in inside]
                touching = [s for s in starts if s < band.out_stop and s + window > band.out_start]
                assert set(touching) <= set(inside), (height, max_rows, band)  # all windows over its rows
            if len(bands) > 1:
                assert max(b.stop - b.start for b in bands) <= max(max_rows, 2 * window)


@pytest.mark.parametrize("min_size", [0, 6])
def test_band_wise_instances_equal_whole_image_instances(tmp_path, min_size):
    # blobs and thin diagonal lines crossing the band seams (rows 256, 512, ...) in every way
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.normal(size=(3 * TILE + 40, 300)), 1.5) > 0.15
    for k in range(0, 300, 17):
        rows = np.arange(TILE - 5, TILE + 5)
        mask[rows, np.clip(k + (rows - TILE) * (-1) ** k, 0, 299)] = True
    mask_u8 = np.where(mask, 255, 0).astype(np.uint8)
    row = write_mask_and_instances(mask_u8, tmp_path / "mask.tif", tmp_path / "instances.tif", min_size, TILE)
    expected = instances_from_probability(mask.astype(np.float32), 0.5, min_size)
    instances = tifffile.imread(tmp_path / "instances.tif")
    assert instances.dtype == np.uint16 and np.array_equal(instances, expected)
    assert np.array_equal(tifffile.imread(tmp_path / "mask.tif"), mask_u8)
    assert row == {"height": mask.shape[0], "width": 300, "foreground_fraction": float(np.mean(mask)),
                   "objects": int(expected.max())}
    assert row["objects"] > 100


def outputs(folder, name: str) -> list[np.ndarray]:
    return [tifffile.imread(folder / kind / name) for kind in ("probability", "mask", "instances")]


@pytest.mark.parametrize("probability,batch_size", [("float32", 16), ("uint8", 1)])
def test_streamed_prediction_equals_whole_image_prediction(student, tmp_path, caplog, probability, batch_size):
    model, checkpoint, _ = student
    folder = tmp_path / "in"
    folder.mkdir()
    image = smooth_image((600, 150))
    tifffile.imwrite(folder / "plain.tif", image)  # memory-mapped
    tifffile.imwrite(folder / "zlib.tif", image[::-1], compression="zlib", rowsperstrip=7)  # decoded to a file
    settings = dict(threshold=0.5, min_size=3, probability=probability, batch_size=batch_size)
    predict_folder(model, checkpoint, folder, tmp_path / "whole", **settings)
    probs = outputs(tmp_path / "whole", "plain.tiff")[0]
    # a threshold that cuts the untrained network's output into many objects, across seams
    settings["threshold"] = float(np.quantile(probs, 0.55)) / (255 if probability == "uint8" else 1)
    predict_folder(model, checkpoint, folder, tmp_path / "whole", **settings)
    with caplog.at_level("INFO", logger="emkt"):
        streamed = predict_folder(model, checkpoint, folder, tmp_path / "bands", memory_mb=0.3, **settings)
    assert "over the memory budget: predicted in" in caplog.text  # 600 x 150 x 64 bytes > 0.3 MB
    assert streamed.images == 2
    for name in ("plain.tiff", "zlib.tiff"):
        whole, bands = outputs(tmp_path / "whole", name), outputs(tmp_path / "bands", name)
        for a, b in zip(whole, bands):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert bands[2].max() > 20  # many objects, some across the band seams
    tables = [pd.read_csv(tmp_path / run / "predictions.csv") for run in ("whole", "bands")]
    pd.testing.assert_frame_equal(*tables)
    assert not [p for p in (tmp_path / "bands").rglob("*") if p.name.startswith(".")]  # no scratch files left


def test_resume_of_a_streamed_image_reads_its_row_in_bands(student, tmp_path):
    model, checkpoint, path = student
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", smooth_image((300, 150), dtype=np.uint8))
    # the command line's --memory-mb reaches predict_folder
    assert main(["predict", "--checkpoint", str(path), "--input", str(folder), "--output", str(tmp_path / "out"),
                 "--memory-mb", "0.3", "--min-size", "0", "--threads", "1"]) == 0
    first = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert tifffile.TiffFile(tmp_path / "out" / "mask" / "a.tiff").pages.first.is_tiled  # written in bands
    mtime = os.stat(tmp_path / "out" / "probability" / "a.tiff").st_mtime_ns
    again = predict_folder(model, checkpoint, folder, tmp_path / "out", min_size=0, memory_mb=0.3, resume=True)
    assert again.resumed == 1 and os.stat(tmp_path / "out" / "probability" / "a.tiff").st_mtime_ns == mtime
    second = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert second.drop(columns="status").equals(first.drop(columns="status")) and second["status"].tolist() == ["resumed"]


def test_memory_budget_must_be_positive(student, tmp_path):
    model, checkpoint, _ = student
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="memory_mb must be > 0"):
        predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", memory_mb=0)
