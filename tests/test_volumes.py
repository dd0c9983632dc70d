"""Volumes (emkt.volumes, emkt.predict_volumes): TIFF stacks, Zarr arrays, OME-Zarr images and
MRC files segmented section by section into OME-Zarr outputs that equal the 2D prediction of
the same sections; resuming, the band path within the memory budget, and 3D linking.
Throughput and peak memory of a volume larger than the budget: benchmarks/volume_predict.py."""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_multiscale
from scipy import ndimage

import emkt.predict
import emkt.predict_volumes
from emkt.bands import IN_MEMORY_BYTES
from emkt.cli import main
from emkt.data import DataFileError, find_volumes, load_folder_images
from emkt.evaluate import volume_instance_scores
from emkt.evaluation_jobs import evaluate_on_external
from emkt.indexing import build_volume_index
from emkt.metrics import instance_scores, instance_scores_of_sections
from emkt.predict import predict_folder
from emkt.volumes import is_volume, link_sections, open_volume, volume_output_names
from test_bands import student  # noqa: F401  (the tiny untrained student, one torch thread)

SHAPE = (3, 48, 64)
# 2D-connected in each section, and joined to the pixel right above or below in z: what
# linking the 2D objects of adjacent sections by overlap gives (without a minimum size).
LINKED = np.zeros((3, 3, 3), dtype=int)
LINKED[1] = 1
LINKED[0, 1, 1] = LINKED[2, 1, 1] = 1


def smooth_volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), (1, 3, 3))
    return np.rint((noise - noise.min()) / np.ptp(noise) * 65535).astype(np.uint16)


def write_volume(kind: str, folder: Path, volume: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "tiff":
        tifffile.imwrite(folder / "vol.tif", volume, photometric="minisblack", compression="zlib", rowsperstrip=16)
        return folder / "vol.tif"
    if kind == "zarr":
        zarr.create_array(str(folder / "vol.zarr"), data=volume, chunks=(1, 32, 32))
        return folder / "vol.zarr"
    if kind == "ome-zarr":  # c, z, y, x with two levels: the full resolution must be chosen
        group = zarr.open_group(str(folder / "vol.ome.zarr"), mode="w")
        write_multiscale([volume[None], volume[None, :, ::2, ::2]], group, axes="czyx")
        return folder / "vol.ome.zarr"
    with mrcfile.new(folder / "vol.mrc") as mrc:
        mrc.set_data(volume.astype(np.float32) / 7.0)  # float sections: converted by their min-max
    return folder / "vol.mrc"


@pytest.fixture(scope="module")
def reference(student, tmp_path_factory):
    """The volume's sections predicted as 2D TIFFs, at a threshold that cuts the untrained
    network's output into many objects: (folder of outputs, settings)."""
    model, checkpoint, _ = student
    root = tmp_path_factory.mktemp("reference")
    volume = smooth_volume()
    for z, section in enumerate(volume):
        (root / "in").mkdir(exist_ok=True)
        tifffile.imwrite(root / "in" / f"s{z}.tif", section)
    predict_folder(model, checkpoint, root / "in", root / "first", batch_size=4)
    probs = np.stack([tifffile.imread(root / "first" / "probability" / f"s{z}.tiff") for z in range(SHAPE[0])])
    settings = dict(threshold=float(np.quantile(probs, 0.55)), min_size=3, batch_size=4)
    predict_folder(model, checkpoint, root / "in", root / "out", **settings)
    return root / "out", settings


def reference_outputs(out: Path) -> list[np.ndarray]:
    return [np.stack([tifffile.imread(out / kind / f"s{z}.tiff") for z in range(SHAPE[0])])
            for kind in ("probability", "mask", "instances")]


def volume_outputs(path: Path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group["0"][:], group["labels/mask/0"][:], group["labels/instances/0"][:]]


@pytest.mark.parametrize("kind", ["tiff", "zarr", "ome-zarr", "mrc"])
def test_a_volume_gives_the_2d_prediction_of_its_sections(student, reference, tmp_path, kind):
    model, checkpoint, _ = student
    source = write_volume(kind, tmp_path / "in", smooth_volume())
    assert is_volume(source) and find_volumes(tmp_path / "in") == ([] if kind == "tiff" else [source])
    summary = predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", **reference[1])
    name = "vol.ome.zarr"
    out = tmp_path / "out" / "volumes" / name
    for expected, got in zip(reference_outputs(reference[0]), volume_outputs(out)):
        assert got.shape == SHAPE and np.array_equal(got, expected), kind  # the full resolution, exactly
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    row = table.iloc[0]
    assert (row.output, row.height, row.width, row.sections, row.status) == (f"volumes/{name}", 48, 64, 3, "ok")
    sections = pd.read_csv(tmp_path / "out" / "volumes" / "vol.sections.csv")
    assert sections["section"].tolist() == [0, 1, 2] and row.objects == sections["objects"].sum()
    assert (summary.images, summary.sections) == (1, 3)


def test_outputs_are_ome_zarr_images_with_labels(student, reference, tmp_path):
    model, checkpoint, _ = student
    write_volume("tiff", tmp_path / "in", smooth_volume())
    predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", link_3d=True, probability="uint8",
                   **reference[1])
    nodes = list(Reader(parse_url(tmp_path / "out" / "volumes" / "vol.ome.zarr"))())
    assert [Path(node.zarr.path).name for node in nodes] == ["vol.ome.zarr", "labels", "mask", "instances", "instances_3d"]
    image = nodes[0]
    assert [axis["name"] for axis in image.metadata["axes"]] == ["z", "y", "x"]
    assert image.data[0].shape == SHAPE and image.data[0].dtype == np.uint8
    assert all(node.data[0].shape == SHAPE for node in nodes[2:])
    group = zarr.open_group(str(tmp_path / "out" / "volumes" / "vol.ome.zarr"), mode="r")
    assert group["0"].chunks == (1, 48, 64)  # one section per chunk
    mask, instances, linked = (group[f"labels/{name}/0"][:] for name in ("mask", "instances", "instances_3d"))
    assert np.array_equal(instances > 0, linked > 0)
    # every 2D object is part of exactly one 3D object
    for z in range(SHAPE[0]):
        pairs = np.unique(np.stack([instances[z][instances[z] > 0], linked[z][instances[z] > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[0]
    assert row.objects_3d == linked.max() == group.attrs["emkt"]["objects_3d"]


def test_resume_predicts_only_the_unfinished_sections(student, reference, tmp_path, monkeypatch):
    model, checkpoint, path = student
    write_volume("zarr", tmp_path / "in", smooth_volume())
    settings = reference[1]
    args = ["predict", "--checkpoint", str(path), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--threshold", str(settings["threshold"]), "--min-size", "3", "--batch-size", "1", "--threads", "1"]
    assert main(args) == 0
    table = tmp_path / "out" / "volumes" / "vol.sections.csv"
    finished = pd.read_csv(table)
    finished.iloc[:1].to_csv(table, index=False)  # as if stopped after section 0
    group = zarr.open_group(str(tmp_path / "out" / "volumes" / "vol.ome.zarr"), mode="r+")
    group["labels/instances/0"][2] = 0  # half-written
    calls = []
    original = emkt.predict_volumes.predict_tiles
    monkeypatch.setattr(emkt.predict_volumes, "predict_tiles",
                        lambda m, tiles, *a: calls.append(len(tiles)) or original(m, tiles, *a))
    summary = predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", resume=True, batch_size=1,
                             threshold=settings["threshold"], min_size=3)
    assert calls == [1, 1] and summary.sections == 2  # sections 1 and 2 only
    for expected, got in zip(reference_outputs(reference[0]), volume_outputs(tmp_path / "out" / "volumes" / "vol.ome.zarr")):
        assert np.array_equal(got, expected)
    pd.testing.assert_frame_equal(pd.read_csv(table), finished)
    calls.clear()
    again = predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", resume=True,
                           threshold=settings["threshold"], min_size=3)
    assert calls == [] and again.resumed == 1
    assert pd.read_csv(tmp_path / "out" / "predictions.csv")["status"].tolist() == ["resumed"]
    # other settings: not mixed into the finished sections
    with pytest.raises(DataFileError, match="none of its 1 image files could be read"):
        predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", resume=True, threshold=0.9, min_size=3)
    status = pd.read_csv(tmp_path / "out" / "predictions.csv")["status"][0]
    assert status.startswith("skipped: ") and "written with other settings (threshold)" in status


def test_sections_over_the_memory_budget_are_predicted_in_bands(student, tmp_path, monkeypatch, caplog):
    model, checkpoint, _ = student
    volume = smooth_volume((2, 160, 64), seed=1)
    write_volume("tiff", tmp_path / "in", volume)
    settings = dict(threshold=0.5, min_size=0, batch_size=16)
    predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "whole", **settings)
    whole = volume_outputs(tmp_path / "whole" / "volumes" / "vol.ome.zarr")
    settings["threshold"] = float(np.quantile(whole[0], 0.55))
    predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "whole", **settings)
    whole = volume_outputs(tmp_path / "whole" / "volumes" / "vol.ome.zarr")
    pixels = []
    original = emkt.predict.predict_tiles
    monkeypatch.setattr(emkt.predict, "predict_tiles", lambda m, tiles, *a: pixels.append(tiles.size) or original(m, tiles, *a))
    with caplog.at_level("INFO", logger="emkt"):
        predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "bands", memory_mb=0.3, **settings)
    assert "section 0: 160 x 64 pixels, over the memory budget: predicted in 2 bands" in caplog.text
    assert len(pixels) == 4 and max(pixels) * IN_MEMORY_BYTES / 2 <= 0.3 * 2**20  # bands of BAND_BYTES per pixel
    for expected, got in zip(whole, volume_outputs(tmp_path / "bands" / "volumes" / "vol.ome.zarr")):
        assert np.array_equal(got, expected)
    assert whole[2].max() > 10  # objects across the band seams too


def test_sections_are_batched_within_the_memory_budget(student, tmp_path, monkeypatch):
    model, checkpoint, _ = student
    write_volume("mrc", tmp_path / "in", smooth_volume((5, 32, 32)))
    calls = []
    original = emkt.predict_volumes.predict_tiles
    monkeypatch.setattr(emkt.predict_volumes, "predict_tiles",
                        lambda m, tiles, *a: calls.append(len(tiles)) or original(m, tiles, *a))
    budget = 2.5 * 32 * 32 * IN_MEMORY_BYTES / 2**20  # two and a half sections
    predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", memory_mb=budget, batch_size=16)
    assert calls == [2, 2, 1]


def test_linking_joins_overlapping_objects_of_adjacent_sections():
    # ids in scan order within each section, as the 2D instances are numbered
    sections = np.zeros((4, 8, 10), dtype=np.uint32)
    sections[0, 1:3, 1:3] = 1     # A, continued below
    sections[1, 2:4, 2:4] = 1
    sections[2, 3:5, 3:5] = 2
    sections[0, 5:7, 1:3] = 3     # B and C merge in section 1 (a branch): one object
    sections[0, 5:7, 5:7] = 4
    sections[1, 6, 1:7] = 2
    sections[0, 1:3, 8:10] = 2    # D, absent in section 1, and E at the same place in section 2
    sections[2, 1:3, 8:10] = 1
    sections[3, 7, 9] = 1         # F alone at the end
    counts = [4, 2, 2, 1]
    read = (lambda z, start, stop: sections[z, start:stop])
    for rows in (8, 3, 1):  # bands of rows give the same
        objects, labels = link_sections(read, counts, 8, rows)
        linked = np.stack([np.concatenate([labels(z, s, s + rows) for s in range(0, 8, rows)]) for z in range(4)])
        assert objects == 5
        assert linked.max() == 5 and linked.dtype == np.uint32
        assert np.array_equal(linked, ndimage.label(sections > 0, LINKED)[0])  # numbered in z, then scan order
    assert len({linked[0, 5, 1], linked[0, 5, 5], linked[1, 6, 4]}) == 1
    assert linked[0, 1, 8] != linked[2, 1, 8]


def test_linked_prediction_is_the_3d_components_of_the_mask(student, tmp_path):
    model, checkpoint, _ = student
    write_volume("zarr", tmp_path / "in", smooth_volume())
    predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "out", link_3d=True, min_size=0,
                   threshold=0.5, memory_mb=0.1)  # linked in bands of rows
    group = zarr.open_group(str(tmp_path / "out" / "volumes" / "vol.ome.zarr"), mode="r")
    mask, linked = group["labels/mask/0"][:], group["labels/instances_3d/0"][:]
    assert np.array_equal(linked, ndimage.label(mask > 0, LINKED)[0])


def test_volume_readers_name_bad_inputs(tmp_path):
    tifffile.imwrite(tmp_path / "rgb_stack.tif", np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
    with open_volume(tmp_path / "rgb_stack.tif") as volume:
        assert volume.shape == (2, 8, 8) and volume.section(1).shape == (8, 8)  # RGB sections become grey
    zarr.create_array(str(tmp_path / "four.zarr"), data=np.zeros((2, 2, 4, 4), np.uint8))
    with pytest.raises(DataFileError, match=r"four.zarr: expected a \(z, y, x\) volume, got shape \(2, 2, 4, 4\)"):
        open_volume(tmp_path / "four.zarr").__enter__()
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("a", shape=(2, 4, 4), dtype=np.uint8)
    with pytest.raises(DataFileError, match="plain.zarr: a Zarr group without OME-Zarr multiscales"):
        open_volume(tmp_path / "plain.zarr").__enter__()
    (tmp_path / "broken.mrc").write_bytes(b"\0" * 100)
    with pytest.raises(DataFileError, match="broken.mrc: unreadable MRC file"):
        open_volume(tmp_path / "broken.mrc").__enter__()
    with pytest.raises(DataFileError, match="missing.mrc: file not found"):
        open_volume(tmp_path / "missing.mrc").__enter__()
    names = volume_output_names([Path("a.tif"), Path("a.mrc"), Path("b.ome.zarr"), Path("sub/c.zarr")])
    assert [n.as_posix() for n in names] == ["volumes/a.tif.ome.zarr", "volumes/a.mrc.ome.zarr",
                                             "volumes/b.ome.zarr", "volumes/sub/c.ome.zarr"]


def test_a_folder_of_images_and_volumes_keeps_the_2d_outputs(student, reference, tmp_path, caplog):
    model, checkpoint, _ = student
    write_volume("zarr", tmp_path / "in" / "sub", smooth_volume())
    tifffile.imwrite(tmp_path / "in" / "flat.tif", smooth_volume()[0])
    (tmp_path / "in" / "bad.mrc").write_bytes(b"not an MRC file")
    with caplog.at_level(logging.WARNING, logger="emkt"):
        summary = predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "in" / "out", recursive=True,
                                 **reference[1])
    table = pd.read_csv(tmp_path / "in" / "out" / "predictions.csv")
    assert table["file"].tolist() == ["bad.mrc", "flat.tif", "sub/vol.zarr"]
    assert table["output"].tolist()[1:] == ["flat.tiff", "volumes/sub/vol.ome.zarr"]
    assert table["status"][0].startswith("skipped: unreadable MRC file") and "bad.mrc" in caplog.text
    assert (summary.images, summary.skipped, summary.sections) == (2, 1, 3)
    assert np.array_equal(tifffile.imread(tmp_path / "in" / "out" / "mask" / "flat.tiff"),
                          tifffile.imread(reference[0] / "mask" / "s0.tiff"))
    # the outputs inside the input tree are not inputs of a second run
    again = predict_folder(model, checkpoint, tmp_path / "in", tmp_path / "in" / "out", recursive=True,
                           resume=True, **reference[1])
    assert (again.images, again.resumed) == (0, 2)


# --- labelled volumes as external test sets ---------------------------------------------------------------


def labelled_volume() -> np.ndarray:
    """Instance labels of four sections: object 7 through all of them, 3 in sections 1-2,
    9 in section 0 only, and the ignore label 255 in a corner of section 3."""
    labels = np.zeros((4, 40, 48), np.uint16)
    labels[:, 5:15, 5:15] = 7
    labels[1:3, 25:35, 20:30] = 3
    labels[0, 25:30, 38:44] = 9
    labels[3, :4, :4] = 255
    return labels


def test_a_labelled_volume_is_indexed_read_and_scored_per_section_and_per_volume(student, tmp_path):
    model, checkpoint, _ = student
    labels = labelled_volume()
    image = write_volume("tiff", tmp_path / "image", smooth_volume(labels.shape))
    zarr.create_array(str(tmp_path / "labels.zarr"), data=labels, chunks=(1, 40, 48))
    index, excluded = build_volume_index(image, tmp_path / "labels.zarr", ignore_label=255)
    assert excluded.empty and index["section"].tolist() == [0, 1, 2, 3] and (index["source"] == "vol").all()
    assert index["n_instances"].tolist() == [2, 2, 2, 1] and (index[["height", "width"]] == [40, 48]).all().all()
    items = load_folder_images(index, ignore_label=255)
    assert [item["name"] for item in items] == ["vol/0", "vol/1", "vol/2", "vol/3"]
    assert items[3]["valid"][:4, :4].max() == 0 and items[3]["labels_3d"][:4, :4].max() == 0
    perfect = [(item["labels_3d"] > 0).astype(np.float32) for item in items]
    assert volume_instance_scores(items, perfect, 0.5, 0) == {"object_f1_3d": 1.0, "pq_3d": 1.0}
    # section 1 missing object 3: per volume still matched (IoU 1/2), its PQ lower; 9 gone: a miss
    worse = [p.copy() for p in perfect]
    worse[1][25:35, 20:30] = 0
    worse[0][25:30, 38:44] = 0
    scores = volume_instance_scores(items, worse, 0.5, 0)
    assert scores["object_f1_3d"] == pytest.approx(2 * 2 / (2 * 2 + 1)) and scores["pq_3d"] == pytest.approx(1.5 / 2.5)
    # a binary label volume: its objects are its sections' components linked by overlap
    binary = [{**item, "instances": ndimage.label(item["labels_3d"] > 0)[0]} for item in items]
    for item in binary:
        del item["labels_3d"]
    assert volume_instance_scores(binary, worse, 0.5, 0) == scores
    ev = {"overlap": 0.25, "batch_size": 4, "threshold": 0.5, "calibration_bins": 15, "min_object_size": 3}
    result = evaluate_on_external(model, checkpoint, "student", "baseline", 0, items, "vol", ev, "cpu")
    long, per_image = result.long, result.per_image
    metrics = dict(zip(long["metric"], long["value"]))
    assert {"iou", "object_f1", "object_f1_3d", "pq_3d"} <= set(metrics) and (long["dataset"] == "vol").all()
    assert per_image["name"].tolist() == ["vol/0", "vol/1", "vol/2", "vol/3"]


def test_a_labelled_volume_of_another_shape_or_bad_sections_is_named(tmp_path):
    image = write_volume("mrc", tmp_path, smooth_volume((4, 40, 48)))
    tifffile.imwrite(tmp_path / "labels.tif", labelled_volume()[:3], photometric="minisblack")
    with pytest.raises(DataFileError, match=r"vol.mrc has shape \(4, 40, 48\) but its labels .*labels.tif have "
                                            r"shape \(3, 40, 48\); they must match"):
        build_volume_index(image, tmp_path / "labels.tif")
    floats = labelled_volume().astype(np.float32)
    floats[2, 0, 0] = 0.5
    tifffile.imwrite(tmp_path / "float_labels.tif", floats, photometric="minisblack")
    index, excluded = build_volume_index(image, tmp_path / "float_labels.tif")
    assert index["section"].tolist() == [0, 1, 3]
    assert excluded[["path", "reason"]].values.tolist() == [[f"{image} section 2", "not_labels"]]


def test_scores_of_sections_are_instance_scores_for_one_section():
    rng = np.random.default_rng(3)
    gt = ndimage.label(ndimage.gaussian_filter(rng.normal(size=(60, 60)), 2) > 0.1)[0]
    pred = ndimage.label(ndimage.gaussian_filter(rng.normal(size=(60, 60)), 2) > 0.05)[0]
    pred[gt > 0] = np.where(rng.random((60, 60)) > 0.2, gt + 100, pred)[gt > 0]
    valid = (rng.random((60, 60)) > 0.1).astype(np.uint8)
    expected = instance_scores(pred, gt, valid)
    assert expected["tp"] > 2 and instance_scores_of_sections([pred], [gt], [valid]) == pytest.approx(expected)


def test_the_command_line_takes_one_volume_as_its_input(student, tmp_path):
    source = write_volume("mrc", tmp_path / "in", smooth_volume())
    (tmp_path / "in" / "other.tif").write_bytes(b"")  # beside it, not an input
    assert main(["predict", "--checkpoint", str(student[2]), "--input", str(source), "--output", str(tmp_path / "out"),
                 "--link-3d", "--threads", "1"]) == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table[["file", "output", "sections", "status"]].values.tolist() == [["vol.mrc", "volumes/vol.ome.zarr", 3, "ok"]]
    assert table["objects_3d"][0] == zarr.open_group(str(tmp_path / "out" / "volumes" / "vol.ome.zarr"))[
        "labels/instances_3d/0"][:].max()
