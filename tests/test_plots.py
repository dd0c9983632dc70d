"""Each plot writes a readable PNG, also from sparse or partly missing inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from emkt.plots import (
    plot_metric_bars,
    plot_prediction_panel,
    plot_teacher_scatter,
    plot_training_curves,
)


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
    long = pd.DataFrame(rows, columns=["model", "condition", "seed", "metric", "value"])
    out = tmp_path / "bars.png"
    plot_metric_bars(long, out, ["iou", "dice", "ece"])  # ece: no data
    check_png(out)


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


def test_training_curves(tmp_path):
    histories = {
        "teacher_pretrained": [(0, history(5, val=False))],  # no val columns
        "student_baseline": [(0, history(6)), (1, history(6, seed=1))],
        "joint": [(0, history(1))],  # a single epoch
        "expanded": [],  # no runs at all
    }
    out = tmp_path / "curves.png"
    plot_training_curves(histories, out)
    check_png(out)


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
