"""Segmenting new images (emkt.predict.predict_folder, ``python -m emkt predict``) with a tiny
untrained student on real EM images of the fixture, and the checkpoint checks it relies on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

import emkt.predict
from conftest import REPO, SHARED_DATA
from emkt import __version__
from emkt.checkpoints import NORMALISATION, SEGMENTATION_KINDS, load_model, save_model
from emkt.cli import main
from emkt.data import DataFileError
from emkt.models import build_segmenter, build_student
from emkt.predict import (PredictionSummary, batches_by_shape, find_images, output_names, postprocess,
                          predict_folder, read_any_image)

TINY_STUDENT = {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2,
                "deconv_chns": 8, "dropout_rate": 0.0}
INPUT_SIZE = 32
CEM = SHARED_DATA / "cem_mitolab"
# Fixture masks in which two ground-truth mitochondria touch: connected components merge them.
TOUCHING = {"drosophila_vnc/02", "drosophila_vnc/06", "empanada_panoptic/pan_seg"}


def require_fixture() -> None:
    if not CEM.is_dir():
        pytest.skip(f"real-EM fixture not found at {SHARED_DATA}")


def fixture_image(source: str, name: str) -> np.ndarray:
    return tifffile.imread(CEM / source / "images" / f"{name}.tiff")


# tiny models: one torch thread (conftest.one_thread_in_module)
pytestmark = pytest.mark.usefixtures("one_thread_in_module")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> tuple[torch.nn.Module, dict, Path]:
    """A tiny untrained student: (model, checkpoint, path)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "student.pth"
    save_model(path, build_student(TINY_STUDENT, INPUT_SIZE), "student", TINY_STUDENT, INPUT_SIZE)
    model, checkpoint = load_model(path, SEGMENTATION_KINDS)
    return model, checkpoint, path


@pytest.fixture(scope="module")
def em_folder(tmp_path_factory) -> Path:
    """138x224 and 256x256 TIFFs, a 224x224 PNG, a 224x224 RGB TIFF and one 1024x1024 TIFF."""
    require_fixture()
    folder = tmp_path_factory.mktemp("em")
    tifffile.imwrite(folder / "cem1.tiff", fixture_image("cem_examples", "mitochondria1"))
    Image.fromarray(fixture_image("cem_examples", "mitochondria2")).save(folder / "cem2.png")
    tifffile.imwrite(folder / "cem3_rgb.tif", np.repeat(fixture_image("cem_examples", "mitochondria3")[..., None], 3, -1),
                     photometric="rgb")
    tifffile.imwrite(folder / "pan_seg.tiff", fixture_image("empanada_panoptic", "pan_seg"))
    tifffile.imwrite(folder / "vnc00.tiff", fixture_image("drosophila_vnc", "00"))
    return folder


@pytest.fixture(scope="module")
def predicted(student, em_folder, tmp_path_factory) -> tuple[Path, PredictionSummary]:
    model, checkpoint, _ = student
    out = tmp_path_factory.mktemp("predicted")
    return out, predict_folder(model, checkpoint, em_folder, out, threshold=0.5, min_size=32, batch_size=4)


def outputs(out: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(tifffile.imread(out / kind / f"{name}.tiff") for kind in ("probability", "mask", "instances"))


# --- reading and finding images -------------------------------------------------------------------


def test_read_any_image_gives_the_grey_uint8_pixels_of_tiff_png_and_rgb(tmp_path):
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.PNG")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")  # indices must not be mistaken for grey
    tifffile.imwrite(tmp_path / "grey16.tif", grey.astype(np.uint16) * 1000)
    for name in ("grey.png", "rgb.PNG", "palette.png", "grey16.tif"):
        image = read_any_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == grey.shape, name
    assert np.array_equal(read_any_image(tmp_path / "grey.png"), grey)
    assert np.array_equal(read_any_image(tmp_path / "rgb.PNG"), grey)
    assert np.array_equal(read_any_image(tmp_path / "palette.png"), grey)
    (tmp_path / "broken.png").write_bytes((tmp_path / "grey.png").read_bytes()[:40])
    with pytest.raises(DataFileError, match="broken.png: unreadable image"):
        read_any_image(tmp_path / "broken.png")
    with pytest.raises(DataFileError, match="missing.png: file not found"):
        read_any_image(tmp_path / "missing.png")


def test_find_images_is_sorted_skips_hidden_and_other_files(tmp_path):
    for name in ("b.tif", "a.PNG", "c.jpeg", ".hidden.tif", "notes.txt", "sub/d.tiff", ".cache/e.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_images(tmp_path)] == ["a.PNG", "b.tif", "c.jpeg"]
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, recursive=True)] == [
        "a.PNG", "b.tif", "c.jpeg", "sub/d.tiff"]


def test_output_names_keep_the_suffix_only_where_names_would_clash():
    names = output_names([Path("a.png"), Path("a.TIF"), Path("b.jpg"), Path("sub/a.png")])
    assert [n.as_posix() for n in names] == ["a.png.tiff", "a.TIF.tiff", "b.tiff", "sub/a.tiff"]


def test_batches_group_same_shapes_within_the_size_and_pixel_limits():
    shapes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3), (2, 2), (4, 4)]
    batches = list(batches_by_shape(shapes, lambda s: s, batch_size=3, max_pixels=1000))
    assert batches == [[(2, 2)] * 3, [(3, 3)] * 2, [(2, 2)], [(4, 4)]]
    # At most 9 pixels per call: two 2x2 images, one 3x3, and a 4x4 alone although larger.
    assert list(batches_by_shape(shapes, lambda s: s, batch_size=3, max_pixels=9)) == [
        [(3, 3)], [(2, 2)] * 2, [(3, 3)], [(2, 2)] * 2, [(4, 4)]]
    # Waiting images past the budget: the group with the most pixels goes first.
    assert list(batches_by_shape([(1, 5), (5, 1), (2, 3), (3, 2)], lambda s: s, batch_size=3, max_pixels=20)) == [
        [(2, 3)], [(1, 5)], [(5, 1)], [(3, 2)]]


# --- post-processing --------------------------------------------------------------------------------


@pytest.mark.slow
def test_perfect_probability_gives_the_ground_truth_instances_back():
    """Connected components of a perfect probability map: every predicted object is exactly a
    union of whole ground-truth objects, and where no two ground-truth objects touch it is the
    ground truth up to numbering. In TOUCHING, touching objects merge into one component."""
    require_fixture()
    merged = set()
    for path in sorted(CEM.glob("*/masks/*.tiff")):
        labels = tifffile.imread(path)
        mask, instances = postprocess((labels > 0).astype(np.float32), 0.5, 0)
        assert np.array_equal(mask > 0, labels > 0) and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(instances > 0, labels > 0)
        pairs = np.unique(np.stack([labels[labels > 0], instances[labels > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1], f"{path}: a ground-truth object was split"
        n_true, n_pred = len(np.unique(pairs[0])), len(np.unique(pairs[1]))
        if n_pred == n_true:  # one-to-one: the same objects, numbered otherwise
            assert len(np.unique(pairs[1])) == pairs.shape[1]
        else:
            merged.add(f"{path.parent.parent.name}/{path.stem}")
    assert merged == TOUCHING


def test_min_size_removes_exactly_the_smaller_components():
    require_fixture()
    labels = tifffile.imread(CEM / "cem_examples" / "masks" / "mitochondria3.tiff")
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    min_size = int(np.median(sizes))
    _, instances = postprocess((labels > 0).astype(np.float32), 0.5, min_size)
    kept = np.flatnonzero(sizes >= min_size) + 1
    assert 0 < len(kept) < count and instances.max() == len(kept)
    assert np.array_equal(instances > 0, np.isin(components, kept))
    # Hand-made sizes around the default: 31 goes, 32 stays.
    prob = np.zeros((20, 100), np.float32)
    prob[0, :31] = prob[5, :32] = prob[10, :33] = prob[15, :1] = 1.0
    assert sorted(np.bincount(postprocess(prob, 0.5, 32)[1].ravel())[1:]) == [32, 33]


def test_instances_widen_to_uint32_beyond_65535_objects():
    prob = np.zeros((600, 600), np.float32)
    prob[::2, ::2] = 1.0  # 90000 isolated pixels: separate 8-connected objects
    mask, instances = postprocess(prob, 0.5, 0)
    assert instances.dtype == np.uint32 and instances.max() == 90000 and mask.dtype == np.uint8
    assert postprocess(prob[:10, :10], 0.5, 0)[1].dtype == np.uint16


# --- predicting a folder -----------------------------------------------------------------------------


def test_outputs_have_the_input_shapes_and_agree_with_each_other(predicted, em_folder):
    out, summary = predicted
    table = pd.read_csv(out / "predictions.csv")
    assert table["file"].tolist() == ["cem1.tiff", "cem2.png", "cem3_rgb.tif", "pan_seg.tiff", "vnc00.tiff"]
    assert table["output"].tolist() == ["cem1.tiff", "cem2.tiff", "cem3_rgb.tiff", "pan_seg.tiff", "vnc00.tiff"]
    assert (table["status"] == "ok").all()
    assert (summary.images, summary.skipped, summary.resumed, summary.device) == (5, 0, 0, "cpu")
    assert summary.megapixels == pytest.approx((138 * 224 + 2 * 224 * 224 + 256 * 256 + 1024 * 1024) / 1e6)
    for row in table.itertuples():
        prob, mask, instances = outputs(out, Path(row.file).stem)
        assert prob.shape == mask.shape == instances.shape == read_any_image(em_folder / row.file).shape
        assert (row.height, row.width) == prob.shape
        assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, prob >= 0.5)
        assert instances.dtype == np.uint16 and np.all(mask[instances > 0] == 255)
        assert np.array_equal(instances, postprocess(prob, 0.5, 32)[1])  # small objects removed
        assert row.foreground_fraction == pytest.approx(np.mean(mask > 0)) and row.objects == instances.max()
    assert not list(out.rglob(".*.tmp"))  # every file written through a temporary name


def test_uint8_probability_is_the_rounded_float(student, em_folder, predicted, tmp_path):
    model, checkpoint, _ = student
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cem1.tiff").write_bytes((em_folder / "cem1.tiff").read_bytes())
    predict_folder(model, checkpoint, folder, tmp_path / "out", probability="uint8")
    quantised, mask, _ = outputs(tmp_path / "out", "cem1")
    exact, exact_mask, _ = outputs(predicted[0], "cem1")
    assert quantised.dtype == np.uint8 and np.array_equal(quantised, np.rint(exact * 255).astype(np.uint8))
    assert np.array_equal(mask, exact_mask)  # the mask comes from the float probability


def test_batched_prediction_equals_predicting_alone(student, monkeypatch, tmp_path):
    require_fixture()
    model, checkpoint, _ = student
    image = fixture_image("cem_examples", "mitochondria1")  # 138 x 224: padded windows at the edge
    batch = tmp_path / "batch"
    batch.mkdir()
    for name, variant in (("a", image), ("b", image[::-1]), ("c", image[:, ::-1])):
        tifffile.imwrite(batch / f"{name}.tiff", np.ascontiguousarray(variant))
    alone = tmp_path / "alone"
    alone.mkdir()
    tifffile.imwrite(alone / "a.tiff", image)
    calls = []
    original = emkt.predict.predict_tiles
    monkeypatch.setattr(emkt.predict, "predict_tiles", lambda m, tiles, *a: calls.append(len(tiles)) or original(m, tiles, *a))
    predict_folder(model, checkpoint, batch, tmp_path / "out_batch", batch_size=16)
    predict_folder(model, checkpoint, alone, tmp_path / "out_alone", batch_size=16)
    assert calls == [3, 1]
    np.testing.assert_allclose(outputs(tmp_path / "out_batch", "a")[0], outputs(tmp_path / "out_alone", "a")[0],
                               atol=1e-5, rtol=0)


def test_bad_files_are_skipped_and_listed(student, em_folder, tmp_path, caplog):
    model, checkpoint, _ = student
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.tiff").write_bytes((em_folder / "cem1.tiff").read_bytes())
    (folder / "truncated.tiff").write_bytes((em_folder / "pan_seg.tiff").read_bytes()[:300])
    tifffile.imwrite(folder / "stack.tiff", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")  # a volume
    tifffile.imwrite(folder / "hyper.tiff", np.zeros((2, 2, 16, 16), np.uint8), photometric="minisblack")
    (folder / "text.png").write_text("not an image")
    (folder / "good.png").write_bytes(b"")  # an empty file, named like good.tiff but for its suffix
    with caplog.at_level(logging.WARNING, logger="emkt"):
        summary = predict_folder(model, checkpoint, folder, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("file")
    assert (summary.images, summary.skipped, summary.sections) == (2, 4, 3)
    assert table.loc["good.tiff", ["output", "status"]].tolist() == ["good.tiff.tiff", "ok"]
    assert table.loc["good.png", "status"].startswith("skipped: unreadable image")
    assert table.loc["truncated.tiff", "status"].startswith("skipped: unreadable TIFF")
    assert table.loc["stack.tiff", ["output", "status"]].tolist() == ["volumes/stack.ome.zarr", "ok"]
    assert table.loc["hyper.tiff", "status"] == "skipped: expected a (z, y, x) volume, got shape (2, 2, 16, 16)"
    assert table.loc["text.png", "status"].startswith("skipped: unreadable image")
    assert table.loc[["truncated.tiff", "hyper.tiff"], ["output", "height"]].isna().all().all()
    for name in ("truncated.tiff", "hyper.tiff", "text.png", "good.png"):
        assert any(name in record.getMessage() for record in caplog.records), name
    assert sorted(p.name for p in (tmp_path / "out" / "mask").iterdir()) == ["good.tiff.tiff"]


def test_a_folder_without_usable_images_is_an_error(student, tmp_path):
    model, checkpoint, _ = student
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataFileError, match="empty: no image files"):
        predict_folder(model, checkpoint, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataFileError, match=r"bad: none of its 1 image files could be read \(e.g. x.tif: skipped"):
        predict_folder(model, checkpoint, tmp_path / "bad", tmp_path / "out")
    with pytest.raises(DataFileError, match="missing: input folder not found"):
        predict_folder(model, checkpoint, tmp_path / "missing", tmp_path / "out")


def test_resume_keeps_finished_images_and_redoes_incomplete_ones(student, em_folder, tmp_path):
    model, checkpoint, _ = student
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    for name in ("cem1.tiff", "pan_seg.tiff"):
        (folder / name).write_bytes((em_folder / name).read_bytes())
    out = tmp_path / "in" / "out"  # inside the input tree: its results are not inputs
    first = predict_folder(model, checkpoint, tmp_path / "in", out, recursive=True)
    assert first.images == 2 and (out / "probability" / "sub" / "cem1.tiff").is_file()
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("cem1.tiff")}
    (out / "mask" / "sub" / "pan_seg.tiff").unlink()  # as if killed before writing it
    second = predict_folder(model, checkpoint, tmp_path / "in", out, recursive=True, resume=True)
    assert (second.images, second.resumed) == (1, 1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cem1.tiff")} == finished
    table = pd.read_csv(out / "predictions.csv")
    assert table[["file", "status"]].values.tolist() == [["sub/cem1.tiff", "resumed"], ["sub/pan_seg.tiff", "ok"]]
    assert table["objects"].notna().all() and (table["height"] > 0).all()


def test_settings_and_normalisation_are_checked(student, em_folder, tmp_path):
    model, checkpoint, _ = student
    with pytest.raises(ValueError, match="probability must be one of"):
        predict_folder(model, checkpoint, em_folder, tmp_path, probability="float16")
    with pytest.raises(ValueError, match="overlap must be in"):
        predict_folder(model, checkpoint, em_folder, tmp_path, overlap=1.0)
    with pytest.raises(ValueError, match="normalised as 'min-max'.*applies 'per-image z-score"):
        predict_folder(model, {**checkpoint, "normalisation": "min-max"}, em_folder, tmp_path)


# --- checkpoints -----------------------------------------------------------------------------------------


def rewrite_checkpoint(source: Path, target: Path, **changes) -> Path:
    payload = torch.load(source, weights_only=False)
    payload.update(changes)
    torch.save({k: v for k, v in payload.items() if v is not None}, target)
    return target


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99, "emkt_version": "9.9"},
     rf"other.pth: checkpoint format 99 \(written by emkt 9.9\); this emkt {__version__} reads format 1 only"),
    ({"input_size": None}, r"other.pth: checkpoint lacks keys \['input_size'\]"),
    ({"arch": {k: v for k, v in TINY_STUDENT.items() if k != "hidden_size"}},
     r"other.pth: the student arch lacks \['hidden_size'\]; a student arch has"),
    ({"arch": {**TINY_STUDENT, "width": 3}}, r"other.pth: the student arch has unknown \['width'\]"),
    ({"arch": {"type": "unet", "width": 4, "depth": 3}, "kind": "segmenter"},
     r"other.pth: the weights do not fit the segmenter its arch describes \(Error\(s\) in loading"),
    ({"normalisation": "min-max"}, r"other.pth: the model was trained on inputs normalised as 'min-max'"),
])
def test_unusable_checkpoints_are_named_with_their_problem(student, tmp_path, changes, message):
    path = rewrite_checkpoint(student[2], tmp_path / "other.pth", **changes)
    with pytest.raises(ValueError, match=message):
        load_model(path, SEGMENTATION_KINDS)


def test_workflow_checkpoints_still_load(student, tmp_path):
    """Format 1 is unchanged, and a segmenter's arch keeps its config entry's training epochs;
    the workflow's extra (kept epoch, calibration: floats and lists of ints) loads with weights_only."""
    _, checkpoint, _ = student
    assert checkpoint["format_version"] == 1 and checkpoint["normalisation"] == NORMALISATION
    arch = {"type": "unet", "width": 4, "depth": 3, "epochs": 2}
    calibration = {"temperature": 1.3, "threshold": 0.45, "iou": 0.5, "images": 2,
                   "histogram": {"foreground": [0, 3, 5], "background": [7, 1, 0]}}
    save_model(tmp_path / "unet.pth", build_segmenter(arch, INPUT_SIZE), "segmenter", arch, INPUT_SIZE,
               {"kept_epoch": 2, "fine_tuned_from": "joint", "calibration": calibration})
    loaded = load_model(tmp_path / "unet.pth", SEGMENTATION_KINDS)[1]
    assert loaded["arch"] == arch and loaded["extra"]["calibration"] == calibration


class RunsCode:
    """Unpickling it calls open(path, "w"): a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(student, tmp_path, capsys, writer):
    import pickle

    marker, path = tmp_path / "code_ran", tmp_path / "model.pth"
    payload = {**student[1], "extra": {"calibration": RunsCode(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    with pytest.raises(ValueError, match=rf"^{path}: refused to load: the checkpoint asks for"):
        load_model(path, SEGMENTATION_KINDS)
    assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emkt predict: error: {path}: refused to load") and err.count("\n") == 1
    assert not marker.exists()


# --- the command line ----------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "emkt", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_cli_predicts_a_folder_and_prints_the_summary(student, em_folder, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("cem1.tiff", "cem2.png"):
        (folder / name).write_bytes((em_folder / name).read_bytes())
    done = run_cli("predict", "--checkpoint", str(student[2]), "--input", str(folder), "--output",
                   str(tmp_path / "out"), "--device", "cpu", "--threads", "1", "--probability", "uint8")
    assert done.returncode == 0, done.stderr
    assert "2 images (0.1 Mpx) in" in done.stderr and "images/s" in done.stderr and "Mpx/s on cpu" in done.stderr
    assert tifffile.imread(tmp_path / "out" / "probability" / "cem2.tiff").dtype == np.uint8
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 2


@pytest.mark.slow
def test_cli_help_and_a_text_file_as_checkpoint(tmp_path):
    helped = run_cli("--help")
    assert helped.returncode == 0 and "predict" in helped.stdout
    assert "--min-size" in run_cli("predict", "--help").stdout
    (tmp_path / "model.pth").write_text("hello")
    (tmp_path / "in").mkdir()
    done = run_cli("predict", "--checkpoint", str(tmp_path / "model.pth"), "--input", str(tmp_path / "in"),
                   "--output", str(tmp_path / "out"), "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.startswith(f"emkt predict: error: {tmp_path / 'model.pth'}: not a readable checkpoint")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("changes, problem", [
    ({"format_version": 99}, "checkpoint format 99"),
    ({"arch": {k: v for k, v in TINY_STUDENT.items() if k != "hidden_size"}}, "student arch lacks ['hidden_size']"),
    ({"kind": "teacher", "arch": {"channels": [4], "strides": [2], "num_res_units": 0, "dropout": 0.0}},
     "expected a student or segmenter or ensemble checkpoint, found a teacher"),
])
def test_cli_reports_a_wrong_checkpoint_in_one_line(student, em_folder, tmp_path, capsys, changes, problem):
    path = rewrite_checkpoint(student[2], tmp_path / "model.pth", **changes)
    code = main(["predict", "--checkpoint", str(path), "--input", str(em_folder), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"emkt predict: error: {path}: ") and problem in err


def test_cli_reports_a_missing_folder_and_a_bad_device(student, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(student[2]), "--input", str(tmp_path / "nowhere"),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--threads", "1"]) == 2
    assert capsys.readouterr().err == f"emkt predict: error: {tmp_path / 'nowhere'}: input folder (or file) not found\n"
    assert main(["predict", "--checkpoint", str(student[2]), "--input", str(tmp_path), "--output",
                 str(tmp_path / "out"), "--device", "tpu", "--threads", "1"]) == 2
    assert capsys.readouterr().err.startswith("emkt predict: error: --device tpu: ")
