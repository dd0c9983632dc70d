"""Report figures. Each function writes one PNG and closes its figure.

The Agg backend is selected on import: the workflow runs headless, on clusters without a
display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, FixedLocator, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emkt.scores import mask_scores, teacher_agreement  # noqa: E402
from emkt.tables import DATASET, REPORT, TEST_SET, split_rows, with_dataset  # noqa: E402

__all__ = [
    "plot_dataset_bars",
    "plot_metric_bars",
    "plot_prediction_panel",
    "plot_review_curves",
    "plot_review_examples",
    "plot_speed_accuracy",
    "plot_teacher_scatter",
    "plot_training_curves",
]

DPI = 120
# one per seed (the paper runs 5), repeating only beyond
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
# segmentation networks, in plotting order; teachers predict losses and are not plotted here
NETWORK_MODELS = ("student", "reference")
# references (e.g. the ensemble) must not be mistaken for students: hatched bars, square markers
HATCH = {"student": None, "reference": "//"}
MARKER = {"student": "o", "reference": "s"}
KIND_LABEL = {"student": "student", "reference": "reference network"}


def _save(fig: plt.Figure, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A constrained layout already fits everything inside the figure; "tight" would draw it
    # once more to find the same box (about 10% of a 24-panel figure's saving time).
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    try:
        fig.savefig(out, dpi=DPI, bbox_inches=None if constrained else "tight")
    finally:
        plt.close(fig)


def _no_data(ax: plt.Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _colours(labels: list) -> dict:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def grid_shape(n: int, max_columns: int) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels, at most ``max_columns`` wide and the rows as full as
    they can be: 10 panels in at most 4 columns are 3 rows of 4, 4 panels in 3 columns 2 of 2."""
    n = max(n, 1)
    rows = -(-n // max_columns)
    return rows, -(-n // rows)


def _panel_grid(n: int, max_columns: int, panel: tuple[float, float]) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with ``n`` panels (at least one) of ``panel`` inches in a ``grid_shape`` grid;
    the slots left over in the last row are removed, so ``fig.axes`` are the panels."""
    rows, columns = grid_shape(n, max_columns)
    # constrained: each row gets the room its own labels need (tight_layout gives every row the most)
    fig, axes = plt.subplots(rows, columns, figsize=(panel[0] * columns, panel[1] * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[max(n, 1):]:
        fig.delaxes(ax)
    return fig, flat[:max(n, 1)]


def _networks(long: pd.DataFrame) -> pd.DataFrame:
    """Student and reference rows with finite values; a table without ``model`` is students."""
    if "model" not in long.columns:
        long = long.assign(model="student")
    nets = long[long["model"].isin(NETWORK_MODELS)]
    return nets[np.isfinite(nets["value"].astype(float))]


def network_order(long: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, condition) pairs to plot: students first, then references, each in order of
    first appearance; teacher rows are left out."""
    if "model" not in long.columns:
        long = long.assign(model="student")
    pairs = list(dict.fromkeys(zip(long["model"], long["condition"])))
    return [pair for model in NETWORK_MODELS for pair in pairs if pair[0] == model]


def _kind_legend(target: plt.Axes | plt.Figure, models: set, bars: bool) -> None:
    # one entry per kind of network shown, so the reader can tell references from students
    if bars:
        handles = [Patch(facecolor="white", edgecolor="black", hatch=HATCH[m], label=KIND_LABEL[m])
                   for m in NETWORK_MODELS if m in models]  # fmt: skip
    else:
        handles = [Line2D([], [], linestyle="", marker=MARKER[m], color="grey", label=KIND_LABEL[m])
                   for m in NETWORK_MODELS if m in models]  # fmt: skip
    if isinstance(target, plt.Figure):  # above the panels, where it hides no bar
        target.legend(handles=handles, fontsize=9, loc="outside upper center", ncol=len(handles))
    else:
        target.legend(handles=handles, fontsize=8)


def plot_metric_bars(long: pd.DataFrame, out: Path, metrics: list[str]) -> None:
    """Students and reference networks on the test split: one subplot per metric, in rows of
    at most ``MAX_COLUMNS``, one bar per (model, condition), named under the lowest panel of
    each column; the legend of network kinds is above the panels.

    Bars are the mean over seeds, error bars the sd (none with one seed), and each seed is a
    jittered point. Students come first, then references (hatched, named in the legend), each
    in order of first appearance; teacher rows are not drawn. NaN values are skipped and a
    condition without the metric leaves its slot empty.
    """
    _plot_bar_grid(test_split(long), out, metrics, [None])


def plot_dataset_bars(long: pd.DataFrame, out: Path, metrics: list[str]) -> None:
    """As ``plot_metric_bars``, one row of subplots per data set: the test split, then each
    external set, so a condition's transfer to other microscopes reads down a column. The
    validation split is not drawn: figures report, they are not for choosing."""
    long = split_rows(with_dataset(long), REPORT)
    _plot_bar_grid(long, out, metrics, _datasets(long))


def _datasets(long: pd.DataFrame) -> list[str]:
    names = list(pd.unique(long[DATASET]))
    return [TEST_SET, *(n for n in names if n != TEST_SET)] if TEST_SET in names else names


def test_split(long: pd.DataFrame) -> pd.DataFrame:
    """The test split's rows (all rows of a table without a ``dataset`` column)."""
    return long[long[DATASET] == TEST_SET] if DATASET in long.columns else long


# at most this many panels side by side, so that a figure fits a laptop screen at 100%
MAX_COLUMNS = 4


def _bar_panel_size(groups: int) -> tuple[float, float]:
    # ~0.25 in per bar: 13 networks in 4 columns stay under ~2,000 px at DPI 120
    return max(3.2, 0.25 * groups + 0.7), 2.6


def _plot_bar_grid(long: pd.DataFrame, out: Path, metrics: list[str], datasets: list[str | None]) -> None:
    """Metric panels in a grid: for the test split alone (``datasets == [None]``) the metrics
    wrap at ``MAX_COLUMNS``; with data sets, one row per data set, one column per metric."""
    groups = network_order(long)
    nets = _networks(long)
    colours = _colours(groups)
    rng = np.random.default_rng(0)  # fixed jitter: identical inputs give identical figures
    panels = [(dataset, metric) for dataset in datasets for metric in metrics]
    if datasets == [None]:
        fig, flat = _panel_grid(len(panels), MAX_COLUMNS, _bar_panel_size(len(groups)))
        columns = grid_shape(len(panels), MAX_COLUMNS)[1]
    else:
        columns = max(len(metrics), 1)
        width, height = _bar_panel_size(len(groups))
        fig, axes = plt.subplots(len(datasets), columns, figsize=(width * columns, height * len(datasets)),
                                 squeeze=False, layout="constrained")  # fmt: skip
        flat = list(axes.ravel())
    for ax, (dataset, metric) in zip(flat, panels):
        rows = nets if dataset is None else nets[nets[DATASET] == dataset]
        ax.set_title(metric if dataset is None else f"{_dataset_label(dataset)}: {metric}", fontsize=10)
        _metric_bars(ax, rows[rows["metric"] == metric], groups, colours, rng)
    if not metrics:
        for ax in flat[::columns]:
            _no_data(ax, "no metrics requested")
    _label_bottom_only(flat, columns)
    _kind_legend(fig, {m for m, _ in groups}, bars=True)
    _save(fig, out)


def _label_bottom_only(flat: list[plt.Axes], columns: int) -> None:
    """Network names under the lowest panel of each column only: every panel has the same
    slots, and names under every row would take as much room as the bars. A panel keeps its
    names when the one below it has none (no data)."""
    for i, ax in enumerate(flat):
        below = i + columns
        if below < len(flat) and len(flat[below].get_xticks()) == len(ax.get_xticks()) > 0:
            ax.tick_params(labelbottom=False)


def _dataset_label(dataset: str) -> str:
    return "test split" if dataset == TEST_SET else dataset


def _metric_bars(ax: plt.Axes, sub: pd.DataFrame, groups: list[tuple[str, str]], colours: dict,
                 rng: np.random.Generator) -> None:
    """One metric's bars (mean, sd) and per-seed points, one slot per (model, condition)."""
    if sub.empty:
        _no_data(ax)
        return
    for i, (model, condition) in enumerate(groups):
        mask = (sub["model"] == model) & (sub["condition"] == condition)
        values = sub.loc[mask, "value"].to_numpy(dtype=float)
        if values.size == 0:
            continue
        sd = values.std(ddof=1) if values.size > 1 else 0.0
        ax.bar(i, values.mean(), width=0.6, color=colours[(model, condition)], alpha=0.6,
               hatch=HATCH[model], yerr=sd, capsize=4, edgecolor="black",
               linewidth=0.5)  # fmt: skip
        jitter = rng.uniform(-0.15, 0.15, values.size)
        ax.scatter(i + jitter, values, color="black", s=14, zorder=3)
    ax.set_xticks(np.arange(len(groups)))
    # steeper for many networks, so that long names do not run into each other
    rotation = 30 if len(groups) <= 6 else 50
    ax.set_xticklabels([c for _, c in groups], rotation=rotation, ha="right", rotation_mode="anchor", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def speed_accuracy_points(long: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """One row per (model, condition) of students and references having both metrics.

    Columns: ``model, condition``, ``x_mean, x_sd, y_mean, y_sd`` (mean and sd over the
    finite seed values of metric ``x`` and ``y``; sd NaN with one seed). Rows lacking either
    metric, or with a non-positive mean ``x`` (not drawable on a log axis), are left out.
    Ordered as ``network_order``. Only the test split counts (where the costs are measured).
    """
    long = test_split(long)
    nets = _networks(long)
    per_metric = (
        nets[nets["metric"].isin([x, y])]
        .groupby(["model", "condition", "metric"], sort=False)["value"]
        .agg(["mean", "std"])  # std: ddof=1, NaN with one seed
        .unstack("metric")
    )
    rows = []
    for model, condition in network_order(long):
        if (model, condition) not in per_metric.index:
            continue
        rec = per_metric.loc[(model, condition)]
        point = {"model": model, "condition": condition}
        for axis, metric in (("x", x), ("y", y)):
            point[f"{axis}_mean"] = float(rec.get(("mean", metric), np.nan))
            point[f"{axis}_sd"] = float(rec.get(("std", metric), np.nan))
        if np.isfinite(point["y_mean"]) and point["x_mean"] > 0:
            rows.append(point)
    columns = ["model", "condition", "x_mean", "x_sd", "y_mean", "y_sd"]
    return pd.DataFrame(rows, columns=columns)


def _scatter_panel(ax: plt.Axes, points: pd.DataFrame, colours: dict) -> None:
    for p in points.itertuples(index=False):
        # no error bar where the sd is undefined (one seed)
        xerr = p.x_sd if np.isfinite(p.x_sd) else None
        yerr = p.y_sd if np.isfinite(p.y_sd) else None
        ax.errorbar(p.x_mean, p.y_mean, xerr=xerr, yerr=yerr, marker=MARKER[p.model],
                    markersize=7, linestyle="", capsize=3, color=colours[(p.model, p.condition)],
                    markeredgecolor="black")  # fmt: skip
        ax.annotate(str(p.condition), (p.x_mean, p.y_mean), xytext=(5, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    # short labels at 1, 2, 5 per decade (20, 50, 200k, 1M): the default minor 2x10^5 overlap
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
    ax.grid(alpha=0.3, which="both")
    _kind_legend(ax, set(points["model"]), bars=False)


def plot_speed_accuracy(
    long: pd.DataFrame,
    out: Path,
    accuracy: str = "iou",
    speed: str = "images_per_s",
    parameters: str = "parameters",
) -> None:
    """Accuracy against inference speed (left) and parameter count (right), both log x.

    One point per (model, condition) of students and references: the mean over seeds, with sd
    error bars in both directions (none with one seed), labelled with the condition; students
    are circles, references squares. A network without the speed (or parameter) metric is
    left out of that panel; an empty panel says "no data".
    """
    groups = network_order(long)
    colours = _colours(groups)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    for ax, x in zip(axes[0], (speed, parameters)):
        ax.set_title(f"{accuracy} vs {x}", fontsize=10)
        points = speed_accuracy_points(long, x, accuracy)
        if points.empty:
            _no_data(ax)
            continue
        _scatter_panel(ax, points, colours)
        ax.set_xlabel(f"{x} (log scale)")
        ax.set_ylabel(accuracy)
    fig.tight_layout()
    _save(fig, out)


def plot_teacher_scatter(per_tile: pd.DataFrame, out: Path) -> None:
    """Teacher-predicted vs true per-image BCE, one subplot per teacher stage (rows of at
    most 3: four stages are 2 x 2).

    ``per_tile`` has columns teacher_stage, seed, student_condition, predicted, true. Points
    are coloured by student condition (same colours in every subplot); the dashed line is the
    identity; titles give MAE and Spearman from ``scores.teacher_agreement``.
    """
    stages = list(pd.unique(per_tile["teacher_stage"]))
    colours = _colours(list(pd.unique(per_tile["student_condition"])))
    fig, flat = _panel_grid(len(stages), 3, (4.5, 4.3))
    for ax, stage in zip(flat, stages):
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
        _no_data(flat[0])
    _save(fig, out)


def _plot_columns(ax: plt.Axes, runs: list[tuple[int, pd.DataFrame]], prefix: str, styles: dict) -> None:
    # union over seeds, in first-seen order, so that a column missing in one run still shows
    columns = list(
        dict.fromkeys(c for _, df in runs for c in df.columns if str(c).startswith(prefix))
    )
    if not columns:
        _no_data(ax, f"no {prefix}* columns")
        return
    colours = _colours(columns)
    drawn: dict[str, None] = {}
    epochs: set[float] = set()
    for seed, df in runs:
        for column in columns:
            if column not in df.columns:
                continue
            y = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
            x = pd.to_numeric(df["epoch"], errors="coerce").to_numpy(dtype=float)
            # validation may run every few epochs only: draw the finite points, not NaN gaps
            keep = np.isfinite(x) & np.isfinite(y)
            if keep.any():
                marker = "." if keep.sum() < 30 else None  # few points: make them visible
                ax.plot(x[keep], y[keep], linestyle=styles[seed], color=colours[column], marker=marker,
                        label=f"{column} (seed {seed})")  # fmt: skip
                drawn[column] = None
                epochs.update(x[keep])
    ax.set_xlabel("epoch")
    # one epoch: its tick alone (the locator would put fractional ticks over each other)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True) if len(epochs) > 1 else FixedLocator(sorted(epochs)))
    ax.grid(alpha=0.3)
    if ax.lines:
        # colours name the columns here; the seeds' line styles are in the figure's legend
        ax.legend(handles=[Line2D([], [], color=colours[c], label=c) for c in drawn], fontsize=7)


def plot_training_curves(histories: dict[str, list[tuple[int, pd.DataFrame]]], out: Path) -> None:
    """Per-epoch training histories: a train_* and a val_* panel per stage, side by side;
    more than three stages go two to a row, so the figure stays about as wide as tall.

    Colour is the column (named in each panel), line style the seed (named once, above the
    panels). ``lr`` and ``seconds`` are not plotted. A stage without val_* columns (or
    without runs) gets an empty panel saying so.
    """
    stages = list(histories)
    per_row = 2 if len(stages) > 3 else 1
    panel = (3.8, 2.6) if per_row == 2 else (5.5, 3.2)
    fig, flat = _panel_grid(2 * max(len(stages), 1), 2 * per_row, panel)
    seeds = list(dict.fromkeys(seed for runs in histories.values() for seed, _ in runs))
    styles = {seed: LINESTYLES[k % len(LINESTYLES)] for k, seed in enumerate(seeds)}
    for k, stage in enumerate(stages):
        ax_train, ax_val = flat[2 * k], flat[2 * k + 1]
        runs = histories[stage]
        _plot_columns(ax_train, runs, "train_", styles)
        _plot_columns(ax_val, runs, "val_", styles)
        ax_train.set_title(f"{stage}: training losses", fontsize=10)
        ax_val.set_title(f"{stage}: validation", fontsize=10)
    if not stages:
        _no_data(flat[0])
        _no_data(flat[1])
    if seeds:
        handles = [Line2D([], [], color="grey", linestyle=styles[seed], label=f"seed {seed}") for seed in seeds]
        fig.legend(handles=handles, loc="outside upper center", ncol=len(seeds), fontsize=9)
    _save(fig, out)


def plot_prediction_panel(
    panel: dict[str, dict[str, np.ndarray]], out: Path, max_images: int = 4, threshold: float = 0.5
) -> None:
    """Example predictions: rows are images, columns image, GT and one per condition.

    ``panel[condition]`` holds ``image`` (N,H,W), ``gt`` (N,H,W) in {0,1} and ``prob``
    (N,H,W) in [0,1]; image and GT come from the first condition. Each condition shows the
    prediction binarised at ``threshold`` as an error map (white TP, magenta FP, green FN)
    with the per-image IoU (emkt.metrics' conventions) in the title.
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
    # one row per image stays side by side for comparison; many conditions get smaller
    # panels instead, so that the figure stays ~2,000 px wide at DPI 120
    size = min(2.6, 16.5 / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), squeeze=False)
    font = 9 if size >= 2 else 8

    results = {}
    for condition in conditions:
        prob = np.nan_to_num(np.asarray(panel[condition]["prob"][:n], dtype=np.float32)).clip(0, 1)
        predicted = prob >= threshold
        results[condition] = (predicted, [mask_scores(predicted[i], gt[i] > 0.5)["iou"] for i in range(n)])

    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray")
        axes[i, 1].imshow(gt[i], cmap="gray", vmin=0, vmax=1)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=font + 1)
            axes[i, 1].set_title("ground truth", fontsize=font + 1)
        truth = gt[i] > 0.5
        for j, condition in enumerate(conditions):
            pred_bin, iou = results[condition][0][i], results[condition][1][i]
            rgb = np.zeros((*truth.shape, 3))
            rgb[pred_bin & truth] = (1, 1, 1)
            rgb[pred_bin & ~truth] = (1, 0, 1)
            rgb[~pred_bin & truth] = (0, 0.8, 0)
            ax = axes[i, 2 + j]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(f"{condition}\nIoU {iou:.3f}" if i == 0 else f"IoU {iou:.3f}", fontsize=font)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if n == 0:
        _no_data(axes[0, 0], "no images")
    fig.suptitle(f"prediction at threshold {threshold:.2f}: white TP, magenta FP, green FN", fontsize=9)
    fig.tight_layout()
    _save(fig, out)


def plot_review_examples(examples: list[dict], out: Path) -> None:
    """The images a teacher ranks worst, one row each: the image, the student's mask over it
    (magenta), the teacher's predicted error over it (red, on the 1 - exp(-BCE) scale; a
    scalar teacher has no map, so no such column), and where labels exist the truly wrong
    pixels (yellow).

    Each example has ``name``, ``image`` (2D), ``mask`` (bool), ``error`` (2D in [0, 1] or
    None), ``predicted_loss`` and optionally ``wrong`` (bool, the labelled wrong pixels).
    """
    labelled = any(example.get("wrong") is not None for example in examples)
    dense = any(example.get("error") is not None for example in examples)  # a scalar teacher: no map column
    shown = None
    columns = (["image", "predicted mask"] + (["predicted error"] if dense else [])
               + (["truly wrong pixels"] if labelled else []))
    column = {title: j for j, title in enumerate(columns)}
    rows = max(len(examples), 1)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.8 * len(columns) + 0.8, 2.8 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for i, example in enumerate(examples):
        image = np.asarray(example["image"], dtype=np.float32)
        panels = axes[i]
        for ax in panels:
            ax.imshow(image, cmap="gray")
        name = str(example["name"])
        name = name if len(name) <= 30 else "…" + name[-29:]
        panels[0].set_ylabel(f"#{i + 1} {name}\npredicted loss {example['predicted_loss']:.3f}", fontsize=8)
        panels[1].imshow(np.ma.masked_where(~np.asarray(example["mask"], bool), np.ones(image.shape)), cmap="cool",
                         alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
        if dense and example.get("error") is not None:
            shown = panels[column["predicted error"]].imshow(np.asarray(example["error"], dtype=np.float32),
                                                             cmap="Reds", alpha=0.6, vmin=0, vmax=1,
                                                             interpolation="nearest")
        elif dense:
            _no_data(panels[column["predicted error"]], "no error map")
        if labelled:
            wrong = example.get("wrong")
            if wrong is None:
                _no_data(panels[column["truly wrong pixels"]], "no labels")
            else:
                panels[column["truly wrong pixels"]].imshow(
                    np.ma.masked_where(~np.asarray(wrong, bool), np.ones(image.shape)), cmap="autumn", alpha=0.6,
                    vmin=0, vmax=1, interpolation="nearest")
    for j, title in enumerate(columns):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if not examples:
        _no_data(axes[0, 0], "no images")
    fig.suptitle("images the teacher ranks most likely wrong, worst first", fontsize=10)
    if shown is not None:
        fig.colorbar(shown, ax=list(axes[:, -1]), shrink=0.8, label="predicted error, 1 − exp(−BCE)")
    _save(fig, out)


def plot_review_curves(curves: pd.DataFrame, out: Path) -> None:
    """Review curves (emkt.review): one panel per data set, level (images or objects) and
    student; a line per proofreader, the mean over seeds, with its area (AURC, the mean over
    seeds) in the legend. Random order is the grey diagonal, the oracle a dotted line.

    ``curves`` has the columns of emkt.review.CURVE_COLUMNS.
    """
    from emkt.review import LEVELS, ORACLE, RANDOM

    keys = ["dataset", "level", "student"]
    panels = list(curves[keys].drop_duplicates().itertuples(index=False, name=None)) if not curves.empty else []
    proofreaders = [p for p in pd.unique(curves["proofreader"]) if p not in (RANDOM, ORACLE)] if panels else []
    colours = _colours(proofreaders)
    fig, flat = _panel_grid(max(len(panels), 1), 3, (4.2, 3.8))
    for ax, (dataset, level, student) in zip(flat, panels):
        sub = curves[(curves["dataset"] == dataset) & (curves["level"] == level) & (curves["student"] == student)]
        for proofreader, group in sub.groupby("proofreader", sort=False):
            mean = group.groupby("reviewed", sort=True)["found"].mean()
            x, y = mean.index.to_numpy(dtype=float), mean.to_numpy(dtype=float)
            if not np.isfinite(y).any():
                continue
            area = np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)
            style = {RANDOM: {"color": "grey", "linestyle": "--"}, ORACLE: {"color": "black", "linestyle": ":"}}.get(
                proofreader, {"color": colours.get(proofreader)})
            ax.plot(x, y, label=f"{proofreader} ({area:.2f})", linewidth=1.5, **style)
        ax.set_title(f"{dataset}: {student}", fontsize=9)
        x_label, y_label = LEVELS.get(level, (level, "found"))
        ax.set_xlabel(f"{x_label} (fraction, worst first)", fontsize=8)
        ax.set_ylabel(f"{y_label} (fraction)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right", title="proofreader (AURC)", title_fontsize=7)
        else:
            _no_data(ax, "no errors to find")
    if not panels:
        _no_data(flat[0], "no external labelled set with teachers")
    _save(fig, out)
