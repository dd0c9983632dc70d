"""Each plot writes a readable PNG, also from sparse or partly missing inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from emkt import plots
from emkt.plots import (
    network_order,
    plot_dataset_bars,
    plot_metric_bars,
    plot_prediction_panel,
    plot_speed_accuracy,
    plot_teacher_scatter,
    plot_training_curves,
    speed_accuracy_points,
)

COLUMNS = ["model", "condition", "seed", "metric", "value"]


def check_png(path: Path) -> np.ndarray:
    assert path.exists()
    assert path.stat().st_size > 5_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 200
    return img


@pytest.fixture(autouse=True)
def no_open_figures():
    yield
    assert plt.get_fignums() == []  # every function closes what it opened


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Figures as they are saved, to inspect their artists after the PNG is written."""
    figures = []
    save = plots._save

    def keep(fig, out):
        figures.append(fig)
        save(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_metric_bars(tmp_path):
    rows = [
        ("student", cond, seed, metric, 0.5 + 0.1 * k + 0.01 * seed)
        for k, cond in enumerate(["baseline", "joint", "expanded"])
        for seed in range(3)
        for metric in ["iou", "dice"]
    ]
    rows += [
        ("student", "single", 0, "iou", 0.4),  # one seed
        ("student", "single", 0, "dice", np.nan),
        ("teacher", "joint", 0, "mae", 0.05),  # not plotted
    ]
    long = pd.DataFrame(rows, columns=COLUMNS)
    out = tmp_path / "bars.png"
    plot_metric_bars(long, out, ["iou", "dice", "ece"])  # ece: no data
    check_png(out)


def network_frame() -> pd.DataFrame:
    rows = [
        ("reference", "ensemble", 0, "iou", 0.8),  # first row, but drawn after the students
        ("teacher", "joint", 0, "mae", 0.05),
        ("student", "baseline", 0, "iou", 0.6),
        ("student", "baseline", 1, "iou", 0.62),
        ("student", "distilled", 0, "iou", 0.7),
        ("student", "distilled", 0, "iou_vs_teacher", 0.9),  # one condition only
        ("reference", "unet", 0, "iou", 0.75),
        ("reference", "baseline", 0, "iou", 0.65),  # same condition name as a student
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_network_order_students_first():
    assert network_order(network_frame()) == [
        ("student", "baseline"), ("student", "distilled"),
        ("reference", "ensemble"), ("reference", "unet"), ("reference", "baseline"),
    ]  # fmt: skip
    no_model = network_frame().drop(columns="model")
    assert network_order(no_model)[0] == ("student", "ensemble")


def test_metric_bars_hatch_references(tmp_path, saved_figures):
    out = tmp_path / "bars.png"
    plot_metric_bars(network_frame(), out, ["iou", "iou_vs_teacher"])
    check_png(out)
    iou, vs_teacher = saved_figures[0].axes
    bars = sorted(iou.patches, key=lambda bar: bar.get_x())
    assert [bar.get_hatch() for bar in bars] == [None, None, "//", "//", "//"]
    assert bars[0].get_height() == pytest.approx(0.61)
    labels = [t.get_text() for t in iou.get_xticklabels()]
    assert labels == ["baseline", "distilled", "ensemble", "unet", "baseline"]
    # one legend for the figure, above the panels, where it covers no bar
    assert iou.get_legend() is None
    legend = [t.get_text() for t in saved_figures[0].legends[0].get_texts()]
    assert legend == ["student", "reference network"]
    # the metric of one condition: one bar, in that condition's slot
    assert [bar.get_x() + bar.get_width() / 2 for bar in vs_teacher.patches] == [1]


def test_dataset_bars_one_row_per_data_set(tmp_path, saved_figures):
    test = network_frame().assign(dataset="test")
    external = network_frame().assign(dataset="other_lab", value=lambda f: f["value"] / 2)
    val = network_frame().assign(dataset="val", value=0.99)  # selection numbers: never drawn
    long = pd.concat([val, external, test], ignore_index=True)  # the test split is drawn first anyway
    out = tmp_path / "datasets.png"
    plot_dataset_bars(long, out, ["iou"])
    check_png(out)
    top, bottom = saved_figures[0].axes  # no row for the validation split
    assert top.get_title() == "test split: iou" and bottom.get_title() == "other_lab: iou"
    heights = [sorted(ax.patches, key=lambda bar: bar.get_x())[0].get_height() for ax in (top, bottom)]
    assert heights == pytest.approx([0.61, 0.305])
    # the test-split figure and the speed/accuracy points ignore the external rows
    plot_metric_bars(long, tmp_path / "bars.png", ["iou"])
    assert sorted(saved_figures[1].axes[0].patches, key=lambda bar: bar.get_x())[0].get_height() == pytest.approx(0.61)


def speed_frame() -> pd.DataFrame:
    rows = []
    for seed, (iou, speed) in enumerate([(0.60, 100.0), (0.64, 140.0)]):
        rows += [
            ("student", "baseline", seed, "iou", iou),
            ("student", "baseline", seed, "images_per_s", speed),
            ("student", "baseline", seed, "parameters", 1e6),
        ]
    rows += [
        ("reference", "ensemble", 0, "iou", 0.7),
        ("reference", "ensemble", 0, "images_per_s", 20.0),
        ("reference", "ensemble", 0, "parameters", 5e6),
        ("student", "joint", 0, "iou", 0.5),  # no speed or size: left out
        ("student", "small", 0, "iou", 0.55),
        ("student", "small", 0, "parameters", 2e5),  # size but no speed
        ("teacher", "joint", 0, "images_per_s", 50.0),
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_speed_accuracy_points():
    speed = speed_accuracy_points(speed_frame(), "images_per_s", "iou")
    assert list(speed["condition"]) == ["baseline", "ensemble"]
    base = speed.iloc[0]
    assert [base["x_mean"], base["y_mean"]] == pytest.approx([120.0, 0.62])
    # sd with ddof=1 of two values a, b is |a - b| / sqrt(2)
    assert [base["x_sd"], base["y_sd"]] == pytest.approx([40 / np.sqrt(2), 0.04 / np.sqrt(2)])
    assert np.isnan(speed.iloc[1]["x_sd"])  # one seed: no spread
    size = speed_accuracy_points(speed_frame(), "parameters", "iou")
    assert list(zip(size["model"], size["condition"])) == [
        ("student", "baseline"), ("student", "small"), ("reference", "ensemble"),
    ]  # fmt: skip
    # validation rows (model selection) leave the test-split points as they are
    with_val = pd.concat([speed_frame().assign(dataset="test"), speed_frame().assign(dataset="val", value=9.0)])
    pd.testing.assert_frame_equal(speed_accuracy_points(with_val, "images_per_s", "iou"), speed)


def test_speed_accuracy_plot(tmp_path, saved_figures):
    out = tmp_path / "speed.png"
    plot_speed_accuracy(speed_frame(), out)
    check_png(out)
    left, right = saved_figures[0].axes
    assert left.get_xscale() == right.get_xscale() == "log"
    assert [t.get_text() for t in left.texts] == ["baseline", "ensemble"]
    # students circles, references squares; sd bars in both directions only with two seeds
    assert [c.lines[0].get_marker() for c in left.containers] == ["o", "s"]
    assert [c.has_xerr and c.has_yerr for c in left.containers] == [True, False]
    assert [t.get_text() for t in right.texts] == ["baseline", "small", "ensemble"]


def test_speed_accuracy_without_speed_metrics(tmp_path, saved_figures):
    long = speed_frame()
    long = long[~long["metric"].isin(["images_per_s", "parameters"])]
    out = tmp_path / "empty.png"
    plot_speed_accuracy(long, out)
    assert out.stat().st_size > 2_000 and mpimg.imread(out).ndim == 3
    left, right = saved_figures[0].axes
    assert [t.get_text() for t in left.texts] == [t.get_text() for t in right.texts] == ["no data"]


def test_teacher_scatter(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for stage in ["pretrained", "joint"]:
        for cond in ["baseline", "joint"]:
            true = rng.uniform(0.1, 0.6, 20)
            frames.append(pd.DataFrame({
                "teacher_stage": stage, "seed": 0, "student_condition": cond,
                "predicted": true + rng.normal(0, 0.05, 20), "true": true,
            }))  # fmt: skip
    # a degenerate stage: one point plus a NaN, Spearman undefined
    frames.append(pd.DataFrame({
        "teacher_stage": "broken", "seed": 1, "student_condition": "baseline",
        "predicted": [0.3, np.nan], "true": [0.2, 0.4],
    }))  # fmt: skip
    out = tmp_path / "scatter.png"
    plot_teacher_scatter(pd.concat(frames, ignore_index=True), out)
    check_png(out)


def history(epochs: int, val: bool = True, seed: int = 0) -> pd.DataFrame:
    e = np.arange(epochs)
    df = pd.DataFrame({
        "epoch": e, "train_loss": 1 / (e + 1) + 0.01 * seed, "train_bce": 0.5 / (e + 1),
        "lr": 1e-3, "seconds": 2.0,
    })  # fmt: skip
    if val:
        dice = 1 - 1 / (e + 2)
        df["val_dice"] = np.where(e % 2 == 0, dice, np.nan)  # validated every other epoch
        df["val_iou"] = dice - 0.1
    return df


def test_training_curves(tmp_path, saved_figures):
    histories = {
        "teacher_pretrained": [(0, history(5, val=False))],  # no val columns
        "student_baseline": [(0, history(6)), (1, history(6, seed=1))],
        "joint": [(0, history(1))],  # a single epoch
        "expanded": [],  # no runs at all
    }
    out = tmp_path / "curves.png"
    plot_training_curves(histories, out)
    check_png(out)
    joint_train = saved_figures[0].axes[4]
    assert joint_train.get_title() == "joint: training losses"
    assert [t.get_text() for t in joint_train.get_xticklabels()] == ["0"]  # one epoch, one tick


def test_prediction_panel(tmp_path):
    rng = np.random.default_rng(0)
    n, h, w = 5, 32, 40
    image = rng.random((n, h, w))
    gt = (rng.random((n, h, w)) > 0.7).astype(np.uint8)
    gt[1] = 0  # an image without mitochondria
    panel = {
        "baseline": {"image": image, "gt": gt, "prob": rng.random((n, h, w))},
        "expanded": {"image": image, "gt": gt, "prob": gt * 0.8 + 0.1},
    }
    out = tmp_path / "sub" / "panel.png"
    plot_prediction_panel(panel, out, max_images=3)
    img = check_png(out)
    assert img.shape[0] < img.shape[1] * 1.5  # 3 rows of 4 columns: not a tall strip

    one = tmp_path / "one.png"
    plot_prediction_panel({"joint": panel["baseline"]}, one, max_images=1)
    assert one.exists() and one.stat().st_size > 2_000


# A full run's size: 8 students and 5 reference networks, 3 seeds, ten metrics, the
# validation split and two external sets; every figure must still fit a laptop screen at 100%.
STUDENTS = ["baseline", "joint", "joint_error_map", "expanded_anchored", "expanded_committee", "ensemble_distilled",
            "pseudo_labelled", "feature_distilled"]
REFERENCES = ["unet", "basicunet", "ensemble", "critic_teacher", "error_map_teacher"]
METRICS = ["iou", "dice", "accuracy", "precision", "recall", "ece", "mce", "object_f1", "pq", "ece_calibrated"]
SCREEN = 2000  # px: at most this wide, and (except where stated) this tall


def realistic_long() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        (dataset, model, condition, seed, metric, rng.uniform(0.3, 0.9))
        for dataset in ["test", "val", "em_mito_mini", "other_lab"]
        for model, conditions in (("student", STUDENTS), ("reference", REFERENCES))
        for condition in conditions for seed in range(3)
        for metric in [*METRICS, "images_per_s", "parameters"]
    ]  # fmt: skip
    rows += [("test", "teacher", "joint", seed, "mae", 0.05) for seed in range(3)]
    return pd.DataFrame(rows, columns=["dataset", *COLUMNS])


def pixel_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, checked to be a readable image at all."""
    img = check_png(path)
    return img.shape[1], img.shape[0]


def grid_of(fig) -> tuple[int, int]:
    """(rows, columns) of the panels, from where they sit in the figure."""
    positions = [ax.get_position() for ax in fig.axes]
    return len({round(p.y0, 3) for p in positions}), len({round(p.x0, 3) for p in positions})


def test_grid_shape():
    assert plots.grid_shape(10, 4) == (3, 4)
    assert plots.grid_shape(9, 4) == (3, 3)  # full rows rather than 4 + 4 + 1
    assert plots.grid_shape(4, 3) == (2, 2)
    assert plots.grid_shape(2, 4) == (1, 2)
    assert plots.grid_shape(0, 4) == (1, 1)


@pytest.mark.slow
def test_metrics_figure_is_a_grid_a_screen_wide(tmp_path, saved_figures):
    out = tmp_path / "metrics.png"
    plot_metric_bars(realistic_long(), out, METRICS)
    width, height = pixel_size(out)
    # was one strip of ten panels, ~15,800 x 470 px
    assert 1200 <= width <= SCREEN and 600 <= height <= 1300 and 1.2 <= width / height <= 3
    fig = saved_figures[0]
    assert len(fig.axes) == 10 and grid_of(fig) == (3, 4)
    # network names under the lowest panel of each column only: rows of 4, 4, 2 panels
    shown = [ax.xaxis.get_tick_params()["labelbottom"] for ax in fig.axes]
    assert shown == [False] * 6 + [True] * 4
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == STUDENTS + REFERENCES


@pytest.mark.slow
def test_datasets_figure_size(tmp_path, saved_figures):
    out = tmp_path / "datasets.png"
    plot_dataset_bars(realistic_long(), out, ["iou", "dice", "object_f1", "pq"])
    width, height = pixel_size(out)
    # was 6,300 x 1,400 px: one row per data set (test, two external sets), one column per metric
    assert 1200 <= width <= SCREEN and 600 <= height <= 1300 and 1.2 <= width / height <= 3
    assert grid_of(saved_figures[0]) == (3, 4)


def test_speed_accuracy_size(tmp_path):
    out = tmp_path / "speed.png"
    plot_speed_accuracy(realistic_long(), out)
    width, height = pixel_size(out)
    assert 1000 <= width <= SCREEN and 400 <= height <= 1000 and 1.5 <= width / height <= 3.5


def test_teacher_scatter_size(tmp_path, saved_figures):
    rng = np.random.default_rng(2)
    per_tile = pd.DataFrame([
        {"teacher_stage": stage, "seed": seed, "student_condition": condition, "true": true,
         "predicted": true + rng.normal(0, 0.05)}
        for stage in ["pretrained", "joint", "pretrained_error_map", "joint_error_map"]
        for condition in STUDENTS[:5] for seed in range(3) for true in rng.uniform(0.1, 0.6, 10)
    ])  # fmt: skip
    out = tmp_path / "scatter.png"
    plot_teacher_scatter(per_tile, out)
    width, height = pixel_size(out)
    # four stages: 2 x 2 square panels (was one strip, 2,100 x 540 px)
    assert 800 <= width <= 1400 and 800 <= height <= 1400 and 0.8 <= width / height <= 1.25
    assert grid_of(saved_figures[0]) == (2, 2)


@pytest.mark.slow
def test_training_curves_size(tmp_path, saved_figures):
    stages = ["teacher_pretrained", "teacher_pretrained_error_map", "segmenter_unet", "segmenter_basicunet",
              "student_baseline", "joint", "joint_error_map", "student_expanded_anchored",
              "student_expanded_committee", "student_ensemble_distilled", "student_pseudo_labelled",
              "student_feature_distilled"]
    histories = {stage: [(seed, history(12, seed=seed)) for seed in range(3)] for stage in stages}
    out = tmp_path / "curves.png"
    plot_training_curves(histories, out)
    width, height = pixel_size(out)
    # twelve stages, two to a row of train | val | train | val (was 1,300 x 4,600 px)
    assert 1400 <= width <= SCREEN and 1400 <= height <= SCREEN and 0.7 <= width / height <= 1.4
    fig = saved_figures[0]
    assert len(fig.axes) == 24 and grid_of(fig) == (6, 4)
    assert fig.axes[2].get_title() == "teacher_pretrained_error_map: training losses"
    # each panel names its columns; the seeds' line styles are named once, above the panels
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["val_dice", "val_iou"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 0", "seed 1", "seed 2"]
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].lines}
    assert len({styles[f"train_loss (seed {seed})"] for seed in range(3)}) == 3


def test_five_seeds_get_five_line_styles(tmp_path, saved_figures):
    plot_training_curves({"joint": [(seed, history(3, seed=seed)) for seed in range(5)]}, tmp_path / "curves.png")
    lines = [line for line in saved_figures[0].axes[0].lines if line.get_label().startswith("train_loss")]
    # get_linestyle() calls every custom dash pattern "--": compare the patterns themselves
    assert len({str(line._unscaled_dash_pattern) for line in lines}) == 5


@pytest.mark.slow
def test_prediction_panel_size(tmp_path):
    rng = np.random.default_rng(3)
    n, h, w = 4, 128, 128
    image, gt = rng.random((n, h, w)), (rng.random((n, h, w)) > 0.7).astype(np.uint8)
    panel = {c: {"image": image, "gt": gt, "prob": rng.random((n, h, w))} for c in [*STUDENTS, "ensemble"]}
    out = tmp_path / "panel.png"
    plot_prediction_panel(panel, out, max_images=4)
    width, height = pixel_size(out)
    # 4 images x (image, GT, 9 networks): smaller panels, one row per image (was 3,400 x 1,280 px)
    assert 1500 <= width <= SCREEN and 500 <= height <= 1000 and 2 <= width / height <= 3.5
