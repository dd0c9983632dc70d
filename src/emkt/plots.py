"""Report figures. Each function writes one PNG and closes its figure.

The Agg backend is selected on import: the workflow runs headless, on clusters without a
display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from emkt.metrics import SegmentationMeter, teacher_agreement  # noqa: E402

__all__ = [
    "plot_metric_bars",
    "plot_prediction_panel",
    "plot_teacher_scatter",
    "plot_training_curves",
]

DPI = 120
LINESTYLES = ["-", "--", ":", "-."]


def _save(fig: plt.Figure, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _no_data(ax: plt.Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _colours(labels: list) -> dict:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def plot_metric_bars(long: pd.DataFrame, out: Path, metrics: list[str]) -> None:
    """Student results from the long format: one subplot per metric, one bar per condition.

    Bars are the mean over seeds, error bars the sd (none with one seed), and each seed is a
    jittered point. Conditions keep their order of first appearance; NaN values are skipped.
    """
    student = long[long["model"] == "student"] if "model" in long.columns else long
    conditions = list(pd.unique(student["condition"]))
    colours = _colours(conditions)
    rng = np.random.default_rng(0)  # fixed jitter: identical inputs give identical figures
    n = max(len(metrics), 1)
    width = max(3.5, 0.9 * len(conditions) + 1.5)
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ax.set_title(metric)
        sub = student[student["metric"] == metric]
        sub = sub[np.isfinite(sub["value"].astype(float))]
        if sub.empty:
            _no_data(ax)
            continue
        x = np.arange(len(conditions))
        for i, condition in enumerate(conditions):
            values = sub.loc[sub["condition"] == condition, "value"].to_numpy(dtype=float)
            if values.size == 0:
                continue
            sd = values.std(ddof=1) if values.size > 1 else 0.0
            ax.bar(i, values.mean(), width=0.6, color=colours[condition], alpha=0.6,
                   yerr=sd, capsize=4, edgecolor="black", linewidth=0.5)  # fmt: skip
            jitter = rng.uniform(-0.15, 0.15, values.size)
            ax.scatter(i + jitter, values, color="black", s=14, zorder=3)
        ax.set_xticks(x)
        ax.set_xticklabels(conditions, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    if not metrics:
        _no_data(axes[0, 0], "no metrics requested")
    fig.tight_layout()
    _save(fig, out)


def plot_teacher_scatter(per_tile: pd.DataFrame, out: Path) -> None:
    """Teacher-predicted vs true per-image BCE, one subplot per teacher stage.

    ``per_tile`` has columns teacher_stage, seed, student_condition, predicted, true. Points
    are coloured by student condition (same colours in every subplot); the dashed line is the
    identity; titles give MAE and Spearman from ``metrics.teacher_agreement``.
    """
    stages = list(pd.unique(per_tile["teacher_stage"]))
    colours = _colours(list(pd.unique(per_tile["student_condition"])))
    n = max(len(stages), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.3), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        sub = per_tile[per_tile["teacher_stage"] == stage]
        pred = sub["predicted"].to_numpy(dtype=float)
        true = sub["true"].to_numpy(dtype=float)
        agree = teacher_agreement(pred, true)
        title = f"{stage}\nMAE {agree['mae']:.3f}, Spearman {agree['spearman']:.2f}"
        ax.set_title(title, fontsize=10)
        for condition, group in sub.groupby("student_condition", sort=False):
            ax.scatter(group["true"], group["predicted"], s=10, alpha=0.6,
                       color=colours[condition], label=str(condition))  # fmt: skip
        finite = np.concatenate([pred[np.isfinite(pred)], true[np.isfinite(true)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.05 * (hi - lo) if hi > lo else 0.05
            lims = (lo - pad, hi + pad)
            ax.plot(lims, lims, "k--", linewidth=1, label="identity")
            ax.set_xlim(lims)
            ax.set_ylim(lims)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("true per-image BCE")
        ax.set_ylabel("teacher-predicted BCE")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    if not stages:
        _no_data(axes[0, 0])
    fig.tight_layout()
    _save(fig, out)


def _plot_columns(ax: plt.Axes, runs: list[tuple[int, pd.DataFrame]], prefix: str) -> None:
    # union over seeds, in first-seen order, so that a column missing in one run still shows
    columns = list(
        dict.fromkeys(c for _, df in runs for c in df.columns if str(c).startswith(prefix))
    )
    if not columns:
        _no_data(ax, f"no {prefix}* columns")
        return
    colours = _colours(columns)
    for k, (seed, df) in enumerate(runs):
        style = LINESTYLES[k % len(LINESTYLES)]
        for column in columns:
            if column not in df.columns:
                continue
            y = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
            x = pd.to_numeric(df["epoch"], errors="coerce").to_numpy(dtype=float)
            # validation may run every few epochs only: draw the finite points, not NaN gaps
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                marker = "." if keep.sum() < 30 else None  # few points: make them visible
                ax.plot(x[keep], y[keep], style, color=colours[column], marker=marker,
                        label=f"{column} (seed {seed})")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def plot_training_curves(histories: dict[str, list[tuple[int, pd.DataFrame]]], out: Path) -> None:
    """Per-epoch training histories: one row per stage, train_* left, val_* right.

    Colour is the column, line style the seed. ``lr`` and ``seconds`` are not plotted. A
    stage without val_* columns (or without runs) gets an empty panel saying so.
    """
    stages = list(histories)
    n = max(len(stages), 1)
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.2 * n), squeeze=False)
    for (ax_train, ax_val), stage in zip(axes, stages):
        runs = histories[stage]
        _plot_columns(ax_train, runs, "train_")
        _plot_columns(ax_val, runs, "val_")
        ax_train.set_title(f"{stage}: training losses", fontsize=10)
        ax_val.set_title(f"{stage}: validation", fontsize=10)
    if not stages:
        _no_data(axes[0, 0])
        _no_data(axes[0, 1])
    fig.tight_layout()
    _save(fig, out)


def plot_prediction_panel(
    panel: dict[str, dict[str, np.ndarray]], out: Path, max_images: int = 4, threshold: float = 0.5
) -> None:
    """Example predictions: rows are images, columns image, GT and one per condition.

    ``panel[condition]`` holds ``image`` (N,H,W), ``gt`` (N,H,W) in {0,1} and ``prob``
    (N,H,W) in [0,1]; image and GT come from the first condition. Each condition shows the
    prediction binarised at ``threshold`` as an error map (white TP, magenta FP, green FN)
    with the per-image IoU (``SegmentationMeter`` conventions) in the title.
    """
    conditions = list(panel)
    if not conditions:
        raise ValueError("plot_prediction_panel: panel has no condition")
    first = panel[conditions[0]]
    images = np.asarray(first["image"], dtype=float)
    gt = np.asarray(first["gt"], dtype=float)
    n = min(max_images, images.shape[0])
    ncols = 2 + len(conditions)
    nrows = max(n, 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows + 0.4), squeeze=False)

    results = {}
    for condition in conditions:
        prob = np.nan_to_num(np.asarray(panel[condition]["prob"][:n], dtype=np.float32)).clip(0, 1)
        meter = SegmentationMeter(threshold=threshold)
        if n:
            target = torch.from_numpy(gt[:n, None].astype(np.float32))
            meter.update(torch.from_numpy(prob[:, None]), target)
        results[condition] = (prob >= threshold, meter.per_image()["iou"].to_numpy())

    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray")
        axes[i, 1].imshow(gt[i], cmap="gray", vmin=0, vmax=1)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=10)
            axes[i, 1].set_title("ground truth", fontsize=10)
        truth = gt[i] > 0.5
        for j, condition in enumerate(conditions):
            pred_bin, iou = results[condition][0][i], results[condition][1][i]
            rgb = np.zeros((*truth.shape, 3))
            rgb[pred_bin & truth] = (1, 1, 1)
            rgb[pred_bin & ~truth] = (1, 0, 1)
            rgb[~pred_bin & truth] = (0, 0.8, 0)
            ax = axes[i, 2 + j]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(f"{condition}\nIoU {iou:.3f}" if i == 0 else f"IoU {iou:.3f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if n == 0:
        _no_data(axes[0, 0], "no images")
    fig.suptitle(f"prediction at threshold {threshold:.2f}: white TP, magenta FP, green FN", fontsize=9)
    fig.tight_layout()
    _save(fig, out)
