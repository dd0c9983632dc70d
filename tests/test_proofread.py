"""The teacher as a proofreader (emkt.review, emkt.proofread, ``emkt predict --teacher``):
review curves and their areas by hand, the teacher's per-image loss as evaluation defines it,
and a folder and a volume (reviewed section by section) predicted with tiny untrained networks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from emkt.bands import IN_MEMORY_BYTES
from emkt.checkpoints import SEGMENTATION_KINDS, load_model, save_model
from emkt.cli import main
from emkt.evaluate import teacher_predictions
from emkt.models import build_student, build_teacher
from emkt.predict import exact_zscore, predict_folder
from emkt.proofread import (QUEUE_COLUMNS, check_teacher, encode_error, evaluate_proofreading, object_table,
                            predicted_error_map, review_examples, review_image, tile_losses, uncertainty, wrongness)
from emkt.review import (ORACLE, RANDOM, UNCERTAINTY, examples_from_arrays, proofreading_markdown, proofreading_table,
                         review_area, review_curve)

INPUT_SIZE = 16
STUDENT = {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2, "deconv_chns": 8,
           "dropout_rate": 0.0}
ERROR_MAP = {"type": "error_map", "channels": [4, 8], "strides": [2], "num_res_units": 1, "dropout": 0.0}
CRITIC = {"type": "critic", "channels": [4, 8], "strides": [2, 2], "num_res_units": 1, "dropout": 0.0}


# tiny models: one torch thread (conftest.one_thread_in_module)
pytestmark = pytest.mark.usefixtures("one_thread_in_module")


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """A tiny untrained student and two teachers (error map, Critic), saved: {name: (model, checkpoint, path)}."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("networks")
    out = {}
    for name, kind, arch, build in (("student", "student", STUDENT, build_student),
                                    ("error_map", "teacher", ERROR_MAP, build_teacher),
                                    ("critic", "teacher", CRITIC, build_teacher)):
        save_model(folder / f"{name}.pth", build(arch, INPUT_SIZE), kind, arch, INPUT_SIZE)
        model, checkpoint = load_model(folder / f"{name}.pth")
        out[name] = (model.eval(), checkpoint, folder / f"{name}.pth")
    return out


def labelled_item(seed: int, shape=(20, 24)) -> dict:
    """A labelled image as emkt.data.whole_image_item gives it: normalised image, mask, instances."""
    rng = np.random.default_rng(seed)
    instances = np.zeros(shape, np.int32)
    instances[2:8, 3:9], instances[11:17, 12:20] = 1, 2
    grey = (rng.normal(100, 20, shape) + 60 * (instances > 0)).clip(0, 255).astype(np.uint8)
    return {"name": f"img{seed}", "image": exact_zscore(grey), "mask": (instances > 0).astype(np.uint8),
            "instances": instances}


# --- review curves by hand ----------------------------------------------------------------------------


def test_review_curve_and_area_by_hand():
    # reviewed by descending score: wrong 2, 1, 1 of 4 -> F = 0, 1/2, 3/4, 1
    curve = review_curve(np.array([3.0, 2.0, 1.0]), np.array([2, 1, 1]))
    assert curve == pytest.approx([0, 0.5, 0.75, 1])
    assert review_area(curve) == pytest.approx((0.5 + 1.25 + 1.75) / 6)
    # the order of the input does not matter, only the scores
    assert review_curve(np.array([1.0, 3.0, 2.0]), np.array([1, 2, 1])) == pytest.approx(curve)


def test_random_order_is_the_diagonal_and_half_the_area():
    """Equal scores are random order: the expected curve k/n exactly, area 0.5, whatever the errors."""
    wrong = np.array([5, 0, 0, 1, 9, 2, 0])
    curve = review_curve(np.zeros(7), wrong)
    assert curve == pytest.approx(np.arange(8) / 7)
    assert review_area(curve) == pytest.approx(0.5)


def test_ties_count_at_their_expected_value_and_the_oracle_nears_one():
    # the first two tie: each counts (2 + 0) / 2 -> F = 0, 1/4, 1/2, 1
    assert review_curve(np.array([1.0, 1.0, 0.0]), np.array([2, 0, 2])) == pytest.approx([0, 0.25, 0.5, 1])
    # all errors in one of n = 4 images, reviewed first: area 1 - 1/(2n)
    perfect = review_curve(np.array([4.0, 3.0, 2.0, 1.0]), np.array([10, 0, 0, 0]))
    assert review_area(perfect) == pytest.approx(7 / 8)
    # ... and last: 1/(2n)
    assert review_area(review_curve(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10, 0, 0, 0]))) == pytest.approx(1 / 8)


def test_nothing_to_find_is_nan_and_bad_input_an_error():
    assert np.isnan(review_area(review_curve(np.array([1.0, 2.0]), np.zeros(2))))
    assert np.isnan(review_area(review_curve(np.zeros(0), np.zeros(0))))
    with pytest.raises(ValueError, match="differ in size"):
        review_curve(np.zeros(2), np.zeros(3))


def test_proofreading_table_means_intervals_and_difference_to_uncertainty():
    rows = [("ext", "baseline", proofreader, seed, "aurc_pixels", value)
            for proofreader, values in (("joint", [0.8, 0.7]), (UNCERTAINTY, [0.6, 0.6]), (RANDOM, [0.5, 0.5]))
            for seed, value in zip([0, 1], values)]
    long = pd.DataFrame(rows, columns=["dataset", "student", "proofreader", "seed", "metric", "value"])
    table = proofreading_table(long).set_index("proofreader")
    joint = table.loc["joint"]
    assert joint["mean"] == pytest.approx(0.75) and joint["sd"] == pytest.approx(np.sqrt(0.005))
    # t(0.975, 1 df) = 12.706; half-width = t sd / sqrt(2)
    assert joint["ci_high"] - joint["mean"] == pytest.approx(12.7062 * np.sqrt(0.005) / np.sqrt(2), rel=1e-4)
    assert joint["delta_mean"] == pytest.approx(0.15) and joint["n_pairs"] == 2
    assert np.isnan(table.loc[RANDOM, "delta_mean"]) and np.isnan(table.loc[UNCERTAINTY, "delta_mean"])
    assert table.loc[RANDOM, "ci_low"] == table.loc[RANDOM, "ci_high"] == 0.5
    text = proofreading_markdown(proofreading_table(long))
    assert "### External set: ext" in text and "| baseline | joint | aurc_pixels | 0.750 ± 0.071" in text
    assert "nothing measured" in proofreading_markdown(proofreading_table(long.iloc[:0]))


# --- the teacher's judgement -----------------------------------------------------------------------------


def test_object_table_by_hand():
    instances = np.zeros((4, 6), np.int32)
    instances[0, 0:2], instances[2:4, 3:6] = 1, 3  # label 2 is unused
    score = np.arange(24, dtype=np.float32).reshape(4, 6)
    table = object_table(instances, {"s": score})
    assert table["object"].tolist() == [1, 3] and table["pixels"].tolist() == [2, 6]
    assert table["s"].tolist() == pytest.approx([0.5, (15 + 16 + 17 + 21 + 22 + 23) / 6])
    assert table[["top", "left", "bottom", "right"]].to_numpy().tolist() == [[0, 0, 1, 2], [2, 3, 4, 6]]
    assert object_table(np.zeros((3, 3), np.int32), {"s": score[:3, :3]}).empty


def test_error_encoding_and_uncertainty():
    error = np.array([0.0, np.log(2.0), 50.0], np.float32)
    assert encode_error(error, "uint8").tolist() == [0, 128, 255]
    assert encode_error(error, "float32").tolist() == pytest.approx(error.tolist())
    assert wrongness(error) == pytest.approx([0, 0.5, 1])
    assert uncertainty(np.array([0.0, 0.3, 0.5, 0.9])) == pytest.approx([0, 0.3, 0.5, 0.1])


def test_teacher_and_student_must_match(networks):
    _, student, _ = networks["student"]
    _, teacher, _ = networks["critic"]
    check_teacher(student, teacher, "s.pth", "t.pth")
    with pytest.raises(ValueError, match=r"^t.pth: the teacher does not match the student s.pth \(input size 16 vs 32\)"):
        check_teacher(student, {**teacher, "input_size": 32}, "s.pth", "t.pth")


def test_scalar_teacher_image_loss_is_the_mean_of_the_evaluated_tiles(networks):
    """The per-image loss of a scalar teacher is the mean of what evaluate_teachers scores per tile."""
    critic = networks["critic"][0]
    item = labelled_item(0, (20, 40))
    prob = np.random.default_rng(1).random(item["mask"].shape).astype(np.float32)
    evaluated = teacher_predictions(critic, [item], [prob], INPUT_SIZE, torch.device("cpu"), 1.0)
    assert len(evaluated) == 6  # 2 x 3 edge-flush tiles
    losses = tile_losses(critic, item["image"], prob, INPUT_SIZE, 4, torch.device("cpu"))
    assert losses == pytest.approx(evaluated["predicted"].to_numpy(), abs=1e-5)
    review = review_image(critic, item["image"], prob, INPUT_SIZE, 0.25, 4, torch.device("cpu"))
    assert review.error is None and review.loss == pytest.approx(evaluated["predicted"].mean(), abs=1e-5)


def test_error_map_is_stitched_and_its_mean_is_the_image_loss(networks):
    teacher = networks["error_map"][0]
    item = labelled_item(2, (INPUT_SIZE, INPUT_SIZE))
    prob = np.random.default_rng(3).random(item["mask"].shape).astype(np.float32)
    one_window = predicted_error_map(teacher, item["image"], prob, INPUT_SIZE, 0.25, 4, torch.device("cpu"))
    with torch.no_grad():
        direct = teacher(torch.from_numpy(item["image"])[None, None].float(), torch.from_numpy(prob)[None, None],
                         dense=True)[0, 0].numpy()
    assert one_window == pytest.approx(direct, abs=1e-5)
    large = labelled_item(4, (21, 37))
    prob = np.full(large["mask"].shape, 0.3, np.float32)
    review = review_image(teacher, large["image"], prob, INPUT_SIZE, 0.25, 4, torch.device("cpu"))
    assert review.error.shape == (21, 37) and (review.error >= 0).all()
    assert review.loss == pytest.approx(float(review.error.mean()))


# --- evaluation as a proofreader ----------------------------------------------------------------------------


def test_evaluate_proofreading_against_uncertainty_random_and_the_oracle(networks):
    items = [labelled_item(k) for k in range(3)]
    rng = np.random.default_rng(5)
    probs = [np.clip(item["mask"] * 0.5 + rng.random(item["mask"].shape) * 0.7, 0, 1).astype(np.float32)
             for item in items]
    teachers = {"joint_error_map": networks["error_map"][0], "joint": networks["critic"][0]}
    long, curves = evaluate_proofreading(teachers, INPUT_SIZE, items, {"baseline": probs}, dataset="ext", seed=0,
                                         overlap=0.25, batch_size=4, device=torch.device("cpu"), pos_weight=1.0,
                                         threshold=0.5, min_size=2)
    value = long.set_index(["proofreader", "metric"])["value"]
    assert value[(RANDOM, "aurc_pixels")] == pytest.approx(0.5)
    assert value[(ORACLE, "aurc_pixels")] >= max(value[(p, "aurc_pixels")] for p in (*teachers, UNCERTAINTY)) - 1e-12
    for proofreader in (*teachers, UNCERTAINTY):
        assert 0 <= value[(proofreader, "aurc_pixels")] <= 1 and -1 <= value[(proofreader, "spearman")] <= 1
    # objects and pixel AUROC: the error-map teacher and the uncertainty, not the Critic
    assert {("joint_error_map", "pixel_auroc"), (UNCERTAINTY, "pixel_auroc"), ("joint_error_map", "aurc_objects"),
            (UNCERTAINTY, "aurc_objects")} <= set(value.index)
    assert ("joint", "pixel_auroc") not in value.index and ("joint", "aurc_objects") not in value.index
    assert set(curves["level"]) == {"pixels", "objects"} and curves["found"].between(0, 1).all()
    examples = examples_from_arrays(review_examples(teachers["joint_error_map"], INPUT_SIZE, items, probs, 2,
                                                    overlap=0.25, batch_size=4, device=torch.device("cpu"),
                                                    threshold=0.5))
    assert len(examples) == 2 and examples[0]["predicted_loss"] >= examples[1]["predicted_loss"]
    assert examples[0]["error"].shape == examples[0]["wrong"].shape == items[0]["mask"].shape


# --- predicting a folder with a teacher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for name, shape in (("a.tiff", (20, 24)), ("b.tiff", (16, 16)), ("c.tiff", (33, 18))):
        tifffile.imwrite(folder / name, rng.integers(0, 255, shape, dtype=np.uint8))
    return folder


def test_predict_with_an_error_map_teacher_writes_maps_losses_and_the_queue(networks, folder, tmp_path):
    student, checkpoint, _ = networks["student"]
    out = tmp_path / "out"
    predict_folder(student, checkpoint, folder, out, min_size=1, batch_size=4, teacher=networks["error_map"][0],
                   probability="uint8", review_figure=2)
    assert (out / "review" / "worst_images.png").stat().st_size > 0
    table = pd.read_csv(out / "predictions.csv")
    queue = pd.read_csv(out / "review_queue.csv")
    assert list(queue.columns) == QUEUE_COLUMNS
    images = queue[queue["level"] == "image"]
    assert images["rank"].tolist() == [1, 2, 3] and images["predicted_error"].is_monotonic_decreasing
    for row in table.itertuples():
        error = tifffile.imread(out / "error" / row.output)
        assert error.dtype == np.uint8 and error.shape == (row.height, row.width)
        assert row.predicted_loss == pytest.approx(images.set_index("output").loc[row.output, "predicted_error"])
        objects = queue[(queue["level"] == "object") & (queue["output"] == row.output)]
        assert len(objects) == row.objects  # every object of the instance image, with its predicted error
    objects = queue[queue["level"] == "object"]
    assert objects["predicted_error"].is_monotonic_decreasing and (objects["pixels"] >= 1).all()


def test_predict_with_a_scalar_teacher_and_resume(networks, folder, tmp_path):
    student, checkpoint, _ = networks["student"]
    out = tmp_path / "out"
    critic = networks["critic"][0]
    predict_folder(student, checkpoint, folder, out, min_size=1, batch_size=4, teacher=critic)
    first = pd.read_csv(out / "predictions.csv")
    assert first["predicted_loss"].notna().all() and not (out / "error").exists()
    assert set(pd.read_csv(out / "review_queue.csv")["level"]) == {"image"}
    (out / "mask" / "b.tiff").unlink()
    predict_folder(student, checkpoint, folder, out, min_size=1, batch_size=4, teacher=critic, resume=True)
    again = pd.read_csv(out / "predictions.csv")
    assert again["status"].tolist() == ["resumed", "ok", "resumed"]
    assert again["predicted_loss"].to_numpy() == pytest.approx(first["predicted_loss"].to_numpy(), abs=1e-5)


def test_cli_teacher_mismatch_is_one_line_and_a_figure_needs_a_teacher(networks, folder, tmp_path, capsys):
    student_path, critic_path = networks["student"][2], networks["critic"][2]
    model, checkpoint = load_model(critic_path)
    save_model(tmp_path / "big.pth", build_teacher(CRITIC, 32), "teacher", CRITIC, 32)
    args = ["predict", "--checkpoint", str(student_path), "--input", str(folder), "--output", str(tmp_path / "o")]
    assert main([*args, "--teacher", str(tmp_path / "big.pth")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(tmp_path / "big.pth") in error and str(student_path) in error
    assert main([*args, "--review-figure", "2"]) == 2
    assert "needs N >= 0 and a --teacher" in capsys.readouterr().err
    assert main([*args, "--teacher", str(student_path)]) == 2
    assert "expected a teacher checkpoint, found a student" in capsys.readouterr().err


# --- volumes, section by section -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A 3-section TIFF stack and its sections as 2D TIFFs: (volume folder, sections folder)."""
    root = tmp_path_factory.mktemp("volume")
    stack = np.random.default_rng(11).integers(0, 255, (3, 20, 24), dtype=np.uint8)
    for folder in ("vol", "flat"):
        (root / folder).mkdir()
    tifffile.imwrite(root / "vol" / "vol.tif", stack, photometric="minisblack")
    for z, section in enumerate(stack):
        tifffile.imwrite(root / "flat" / f"s{z}.tif", section)
    return root / "vol", root / "flat"


def test_a_volume_is_reviewed_section_by_section_as_its_sections_are_as_images(networks, volume, tmp_path):
    student, checkpoint, _ = networks["student"]
    settings = dict(min_size=1, batch_size=4, teacher=networks["error_map"][0], probability="uint8")
    predict_folder(student, checkpoint, volume[1], tmp_path / "flat", **settings)
    predict_folder(student, checkpoint, volume[0], tmp_path / "vol", review_figure=2, **settings)
    flat = pd.read_csv(tmp_path / "flat" / "predictions.csv")
    sections = pd.read_csv(tmp_path / "vol" / "volumes" / "vol.sections.csv")
    assert sections["predicted_loss"].to_numpy() == pytest.approx(flat["predicted_loss"].to_numpy(), abs=1e-6)
    row = pd.read_csv(tmp_path / "vol" / "predictions.csv").iloc[0]
    assert row.predicted_loss == pytest.approx(sections["predicted_loss"].mean())
    # the error maps: an OME-Zarr image nested in the output, equal to the 2D maps
    node = next(iter(Reader(parse_url(tmp_path / "vol" / "volumes" / "vol.ome.zarr" / "error"))()))
    error = np.asarray(node.data[0])
    assert node.metadata["name"] == "predicted_error" and error.dtype == np.uint8
    assert np.array_equal(error, np.stack([tifffile.imread(tmp_path / "flat" / "error" / f"s{z}.tiff")
                                           for z in range(3)]))
    # the queue: a row per section, ranked, and each section's objects as the 2D image's
    queue = pd.read_csv(tmp_path / "vol" / "review_queue.csv")
    images = queue[queue["level"] == "image"]
    assert images["rank"].tolist() == [1, 2, 3] and images["predicted_error"].is_monotonic_decreasing
    assert (images["file"] == "vol.tif").all() and (images["output"] == "volumes/vol.ome.zarr").all()
    by_section = images.set_index("section")["predicted_error"].sort_index()
    assert by_section.to_numpy() == pytest.approx(sections["predicted_loss"].to_numpy())
    flat_queue = pd.read_csv(tmp_path / "flat" / "review_queue.csv")
    assert flat_queue["section"].isna().all()
    columns = ["object", "pixels", "top", "left", "bottom", "right"]
    for z in range(3):
        objects = queue[(queue["level"] == "object") & (queue["section"] == z)].sort_values("object")
        expected = flat_queue[(flat_queue["level"] == "object") & (flat_queue["output"] == f"s{z}.tiff")]
        expected = expected.sort_values("object")
        assert len(objects) == sections["objects"][z] > 0
        assert objects[columns].to_numpy().tolist() == expected[columns].to_numpy().tolist()
        assert objects["predicted_error"].to_numpy() == pytest.approx(expected["predicted_error"].to_numpy(), abs=1e-6)
    assert (tmp_path / "vol" / "review" / "worst_images.png").stat().st_size > 0


def test_a_volume_with_a_scalar_teacher_and_resume(networks, volume, tmp_path):
    student, checkpoint, _ = networks["student"]
    settings = dict(min_size=1, batch_size=4)
    critic, error_map = networks["critic"][0], networks["error_map"][0]
    predict_folder(student, checkpoint, volume[1], tmp_path / "flat", teacher=critic, **settings)
    out = tmp_path / "vol"
    predict_folder(student, checkpoint, volume[0], out, teacher=error_map, **settings)
    assert zarr.open_group(str(out / "volumes" / "vol.ome.zarr"), mode="r")["error/0"].dtype == np.float32
    table = out / "volumes" / "vol.sections.csv"
    pd.read_csv(table).iloc[:1].to_csv(table, index=False)  # as if stopped after section 0
    # resumed with the Critic: every section judged by it (section 0 from its written
    # probability), the error-map teacher's image removed, no object rows
    summary = predict_folder(student, checkpoint, volume[0], out, teacher=critic, resume=True, review_figure=1,
                             **settings)
    assert summary.sections == 2
    expected = pd.read_csv(tmp_path / "flat" / "predictions.csv")["predicted_loss"].to_numpy()
    assert pd.read_csv(table)["predicted_loss"].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert "error" not in zarr.open_group(str(out / "volumes" / "vol.ome.zarr"), mode="r")
    queue = pd.read_csv(out / "review_queue.csv")
    assert set(queue["level"]) == {"image"} and sorted(queue["section"]) == [0, 1, 2]
    # resumed whole: judged again, the same numbers; without a teacher no losses are left
    predict_folder(student, checkpoint, volume[0], out, teacher=critic, resume=True, **settings)
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row.status == "resumed" and row.predicted_loss == pytest.approx(expected.mean(), abs=1e-6)
    predict_folder(student, checkpoint, volume[0], out, resume=True, **settings)
    assert "predicted_loss" not in pd.read_csv(table) and "predicted_loss" not in pd.read_csv(out / "predictions.csv")


def test_volume_sections_over_the_memory_budget_are_not_reviewed(networks, volume, tmp_path, caplog):
    student, checkpoint, _ = networks["student"]
    budget = 100 * IN_MEMORY_BYTES / 2**20  # under a section's 480 pixels: bands
    with caplog.at_level("WARNING", logger="emkt"):
        predict_folder(student, checkpoint, volume[0], tmp_path / "out", min_size=1, batch_size=4, memory_mb=budget,
                       teacher=networks["error_map"][0])
    assert "sections over the memory budget, so not reviewed by the teacher" in caplog.text
    assert pd.read_csv(tmp_path / "out" / "volumes" / "vol.sections.csv")["predicted_loss"].isna().all()
    assert np.isnan(pd.read_csv(tmp_path / "out" / "predictions.csv")["predicted_loss"][0])
    assert "error" not in zarr.open_group(str(tmp_path / "out" / "volumes" / "vol.ome.zarr"), mode="r")
    assert pd.read_csv(tmp_path / "out" / "review_queue.csv").empty
