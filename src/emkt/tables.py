"""Summary tables over seeds from the long results format.

The long format has one row per ``model, condition, seed, metric, value``, for example
``("student", "baseline", 0, "iou", 0.61)`` or ``("teacher", "joint", 0, "mae", 0.05)``.
``model`` is "student" (the segmentation students), "reference" (segmentation networks
that serve as references, e.g. an ensemble) or "teacher" (loss predictors). An optional
``dataset`` column says which images were scored: "test" (the test split, also where the
column is missing), "val" (the validation split) or the name of an external labelled set;
every data set is summarised on its own, each compared with the reference student on the
same images.

Selection and report are kept apart: the validation split is where defaults are chosen, the
test split and the external sets report what was chosen beforehand (``split_rows``), and each
gets its own table (``summary_table``) whose Markdown says which it is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from emkt.bootstrap import BOOTSTRAP_METRICS, count_arrays, paired_image_bootstrap

__all__ = ["DATASET", "KEPT_START", "LONG_COLUMNS", "REPORT", "SELECTION", "TEST_SET", "VAL_SET",
           "compare_students", "paired_difference", "read_long_tables", "split_rows", "summarize",
           "summary_table", "to_long", "to_markdown", "with_dataset", "with_image_bootstrap", "with_kept_start"]

LONG_COLUMNS = ["model", "condition", "seed", "metric", "value"]
# optional first column of the long format: the images scored ("test" when absent)
DATASET = "dataset"
TEST_SET = "test"
# the validation split: model-selection numbers, never part of the report
VAL_SET = "val"
SELECTION, REPORT = "selection", "report"
PURPOSE_LINES = {
    SELECTION: "Selection (validation split): choose defaults here.",
    REPORT: "Report ({sets}): for what was chosen beforehand; never used to choose.",
}
# 1.0 per seed where a fine-tuned network kept its starting weights: a count, not a score
KEPT_START = "kept_start"
# settings a network was evaluated with, not scores: no difference to the baseline's is meaningful
NO_DELTA_METRICS = (KEPT_START, "threshold", "temperature")
KEYS = [DATASET, "model", "condition", "metric"]
# segmentation networks are compared with the reference student; teachers predict losses,
# so a difference to a student's metric would mean nothing for them
COMPARED_MODELS = ("student", "reference")
REFERENCE_MODEL = "student"
DELTA_COLUMNS = ["delta_mean", "delta_sd", "delta_ci_low", "delta_ci_high", "p_value", "n_pairs"]
CONFIDENCE = 0.95
# differences this close (relative to the compared values) are identical up to rounding,
# e.g. 0.7 - 0.6 vs 0.8 - 0.7; a t-test on them would report a spurious p of ~0
IDENTICAL_RTOL = 1e-9


def _check_long(long: pd.DataFrame, source: str = "long table") -> None:
    missing = [c for c in LONG_COLUMNS if c not in long.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected {LONG_COLUMNS}, got {list(long.columns)}"
        )


def with_dataset(long: pd.DataFrame) -> pd.DataFrame:
    """The long table with its ``dataset`` column first; rows without one are the test split."""
    data = long[DATASET].fillna(TEST_SET).astype(str) if DATASET in long.columns else TEST_SET
    return long.drop(columns=[DATASET], errors="ignore").assign(**{DATASET: data})[
        [DATASET, *[c for c in long.columns if c != DATASET]]]


def to_long(metrics: dict[str, float], model: str, condition: str, seed: int, dataset: str = TEST_SET) -> pd.DataFrame:
    """One network's metrics on one data set as rows of the long format."""
    return pd.DataFrame([{DATASET: dataset, "model": model, "condition": condition, "seed": seed,
                          "metric": key, "value": value} for key, value in metrics.items()],
                        columns=[DATASET, *LONG_COLUMNS])


def _order(values: pd.Series) -> list:
    """Distinct values in order of first appearance."""
    return list(pd.unique(values))


def _mean_sd(values: np.ndarray) -> tuple[float, float, int]:
    values = values[np.isfinite(values)]
    n = int(values.size)
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    return mean, sd, n


def paired_difference(values: np.ndarray, reference: np.ndarray) -> dict[str, float | int]:
    """Paired comparison ``values - reference`` over the seeds finite in both.

    Returns the ``DELTA_COLUMNS``: mean and sd (ddof=1) of the per-seed differences, the
    95% confidence interval of the mean from Student's t, the two-sided paired t-test p-value
    and the number of pairs. With no pair everything is NaN; with one pair only the mean is
    defined; with identical differences (sd 0) the interval is [mean, mean] and p is NaN,
    since the t statistic is undefined.
    """
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    both = np.isfinite(values) & np.isfinite(reference)
    diffs = values[both] - reference[both]
    n = int(diffs.size)
    nan = float("nan")
    out: dict[str, float | int] = dict.fromkeys(DELTA_COLUMNS, nan)
    out["n_pairs"] = n
    if n == 0:
        return out
    mean = float(diffs.mean())
    out["delta_mean"] = mean
    if n == 1:
        return out
    scale = max(float(np.abs(values[both]).max()), float(np.abs(reference[both]).max()))
    if np.ptp(diffs) <= IDENTICAL_RTOL * scale:
        # explicit, because scipy returns inf/NaN here with a precision-loss warning
        out.update(delta_sd=0.0, delta_ci_low=mean, delta_ci_high=mean)
        return out
    sd = float(diffs.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    p_value = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    out.update(delta_sd=sd, delta_ci_low=mean - half, delta_ci_high=mean + half, p_value=p_value)
    return out


def _no_comparison() -> dict[str, float | int]:
    return {**dict.fromkeys(DELTA_COLUMNS, float("nan")), "n_pairs": 0}


def summarize(long: pd.DataFrame, reference: str = "baseline") -> pd.DataFrame:
    """Mean and spread over seeds, and a paired comparison with the reference student.

    One row per (dataset, model, condition, metric). Columns:

    - ``dataset`` (see ``with_dataset``), ``model, condition, metric``; ``n_seeds``, ``mean``, ``sd``: over finite values only
      (sd with ddof=1, NaN with one seed);
    - ``delta_mean, delta_sd``: mean and sd of the per-seed differences ``row - reference``,
      where the reference is the row (same dataset, model "student", condition ``reference``,
      same metric) and only seeds finite in both are paired;
    - ``delta_ci_low, delta_ci_high``: 95% confidence interval of ``delta_mean`` (Student's t);
    - ``p_value``: two-sided paired t-test of "no difference";
    - ``n_pairs``: number of paired seeds (0 where there is no comparison);
    - ``kept_start``: "k/n" for a network with ``kept_start`` rows, else empty (``with_kept_start``);
    - ``seed_<s>``: the value per seed (sorted; NaN where a seed is missing).

    Only "student" and "reference" rows are compared, and never their ``kept_start``; the delta columns are NaN for teacher
    rows, for the reference student itself and when the reference is missing. See
    ``paired_difference`` for one or identical differences. Rows are ordered by model,
    condition and metric, each in order of first appearance. The reference name is kept in
    ``summary.attrs["reference"]``.
    """
    _check_long(long)
    long = with_dataset(long)[[DATASET, *LONG_COLUMNS]].copy()
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    dup = long.duplicated(subset=[DATASET, "model", "condition", "seed", "metric"], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        raise ValueError(
            f"duplicate rows for dataset={first[DATASET]!r}, model={first['model']!r}, "
            f"condition={first['condition']!r}, seed={first['seed']!r}, metric={first['metric']!r}"
        )

    seeds = sorted(_order(long["seed"]))
    seed_cols = [f"seed_{s}" for s in seeds]
    wide = long.set_index([*KEYS, "seed"])["value"].unstack("seed").reindex(columns=seeds)

    rows = []
    rank = {k: {v: i for i, v in enumerate(_order(long[k]))} for k in KEYS}
    keys = sorted(
        long[KEYS].drop_duplicates().itertuples(index=False, name=None),
        key=lambda key: tuple(rank[k][v] for k, v in zip(KEYS, key)),
    )
    for dataset, model, condition, metric in keys:
        per_seed = wide.loc[(dataset, model, condition, metric)].to_numpy(dtype=np.float64)
        mean, sd, n = _mean_sd(per_seed)
        ref_key = (dataset, REFERENCE_MODEL, reference, metric)
        compared = (model in COMPARED_MODELS and (model, condition) != ref_key[1:3]
                    and metric not in NO_DELTA_METRICS)
        if compared and ref_key in wide.index:
            delta = paired_difference(per_seed, wide.loc[ref_key].to_numpy(dtype=np.float64))
        else:
            delta = _no_comparison()
        rows.append(
            {
                DATASET: dataset,
                "model": model,
                "condition": condition,
                "metric": metric,
                "n_seeds": n,
                "mean": mean,
                "sd": sd,
                **delta,
                **dict(zip(seed_cols, per_seed)),
            }
        )
    columns = [*KEYS, "n_seeds", "mean", "sd", *DELTA_COLUMNS, *seed_cols]
    summary = pd.DataFrame(rows, columns=columns)
    summary.attrs["reference"] = reference
    return with_kept_start(summary, long)


def compare_students(long: pd.DataFrame, conditions: list[str], metrics: list[str], reference: str) -> pd.DataFrame:
    """``summarize`` of some student rows and metrics against another reference student, e.g.
    the expansion variants against the joint student they all start from."""
    _check_long(long)
    chosen = long[(long["model"] == REFERENCE_MODEL) & long["condition"].isin([reference, *conditions])
                  & long["metric"].isin(metrics)]
    return summarize(chosen, reference=reference)


def split_rows(long: pd.DataFrame, purpose: str) -> pd.DataFrame:
    """The rows of one purpose: ``SELECTION`` the validation split's, ``REPORT`` every other
    data set's (the test split, external sets, and rows without a data set)."""
    if purpose not in PURPOSE_LINES:
        raise ValueError(f"purpose must be one of {list(PURPOSE_LINES)}, got {purpose!r}")
    if DATASET not in long.columns:
        return long.iloc[:0] if purpose == SELECTION else long
    is_val = long[DATASET].astype(str) == VAL_SET
    return long[is_val] if purpose == SELECTION else long[~is_val]


def kept_start_counts(long: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(kept, seeds) per (model, condition) with ``kept_start`` rows, over all data sets.

    Keeping the start is a property of the trained network, not of the images it is scored
    on, so a seed counts once however many data sets repeat it (kept if any row says so).
    """
    rows = long[long["metric"] == KEPT_START].copy()
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=np.float64))]
    per_seed = rows.groupby(["model", "condition", "seed"], sort=False)["value"].max() >= 0.5
    grouped = per_seed.groupby(level=["model", "condition"], sort=False)
    return {key: (int(kept.sum()), int(kept.size)) for key, kept in grouped}


def with_kept_start(summary: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with a ``kept_start`` column "k/n" (k of n seeds kept their starting
    weights) on every row of a network with ``kept_start`` rows in ``long``, else empty.
    ``long`` may hold more data sets than the summary (e.g. the flag only on the validation
    split)."""
    counts = kept_start_counts(long)
    text = [f"{counts[key][0]}/{counts[key][1]}" if key in counts else ""
            for key in zip(summary["model"], summary["condition"])]
    return _before_seeds(summary, {KEPT_START: text})


def _before_seeds(summary: pd.DataFrame, columns: dict[str, list]) -> pd.DataFrame:
    """``summary`` with ``columns`` set, placed before the per-seed values; attrs kept."""
    out = summary.drop(columns=[c for c in columns if c in summary.columns]).assign(**columns)
    seed_cols = [c for c in out.columns if str(c).startswith("seed_")]
    out = out[[*[c for c in out.columns if c not in seed_cols], *seed_cols]]
    out.attrs = dict(summary.attrs)
    return out


def with_image_bootstrap(summary: pd.DataFrame, per_image: pd.DataFrame, replicates: int,
                         seed: int = 0) -> pd.DataFrame:
    """``summary`` with ``boot_ci_low, boot_ci_high, n_images``: a paired bootstrap over images.

    For the iou and dice rows of students and references on a data set with per-image pixel
    counts, compared with the reference student of ``summary.attrs["reference"]``
    (``emkt.bootstrap.paired_image_bootstrap`` with ``replicates`` and ``seed``, over the
    seeds and images both have). ``n_images``: the images in that bootstrap (for the
    reference student itself, those it has counts for); 0 and NaN bounds where there are no
    counts, e.g. per-image tables written before they had them. The bounds are also NaN
    unless the counts cover every seed paired in ``delta_mean`` (``n_pairs``), so that both
    intervals are over the same seeds.
    """
    reference = (REFERENCE_MODEL, summary.attrs.get("reference", "baseline"))
    low, high, n_images = [], [], []
    for rec in summary[[DATASET, "model", "condition", "metric", "n_pairs"]].itertuples(index=False):
        dataset, model, condition, metric, n_pairs = rec
        bounds, n = (float("nan"), float("nan")), 0
        if metric in BOOTSTRAP_METRICS and model in COMPARED_MODELS and not per_image.empty:
            network = (model, condition)
            mine, theirs, n = count_arrays(per_image, dataset, network, reference if network != reference else network)
            # only beside a seed interval over the same seeds: counts missing for a paired seed
            # (an older per-image table) would otherwise shrink the bootstrap's seeds unseen
            if network != reference and n and n_pairs > 0 and mine.shape[0] >= n_pairs:
                bounds = paired_image_bootstrap(mine, theirs, metric, replicates, seed)
        low.append(bounds[0])
        high.append(bounds[1])
        n_images.append(n)
    out = _before_seeds(summary, {"boot_ci_low": low, "boot_ci_high": high, "n_images": n_images})
    out.attrs["replicates"] = replicates
    return out


def summary_table(long: pd.DataFrame, per_image: pd.DataFrame, purpose: str, reference: str = "baseline",
                  replicates: int = 2000, conditions: list[str] | None = None,
                  metrics: list[str] | None = None) -> pd.DataFrame:
    """The selection or the report table: ``summarize`` of the purpose's rows of ``long``
    (``split_rows``; only the student ``conditions`` and ``metrics`` when given, as
    ``compare_students``), with ``with_kept_start`` (from every row of ``long``) and
    ``with_image_bootstrap``. ``attrs["purpose"]`` tells ``to_markdown`` which it is."""
    rows = split_rows(long, purpose)
    if conditions is not None:
        table = compare_students(rows, conditions, metrics or [], reference=reference)
    else:
        table = summarize(rows, reference=reference)
    table = with_kept_start(with_image_bootstrap(table, per_image, replicates), long)
    table.attrs["purpose"] = purpose
    return table


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(mean: float, sd: float, digits: int, sign: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    text = _fmt(mean, digits, sign)
    # one seed: no spread to show
    return text if math.isnan(sd) else f"{text} ± {_fmt(sd, digits)}"


def _cell(text: object) -> str:
    # a '|' inside a cell would split the Markdown column
    return str(text).replace("|", "\\|")


def _delta_cell(rec: dict, digits: int) -> str:
    mean = float(rec["delta_mean"])
    low, high = float(rec["delta_ci_low"]), float(rec["delta_ci_high"])
    text = _pm(mean, float(rec["delta_sd"]), digits, sign=True)
    if math.isnan(low):  # no pair or one pair: no interval
        return text
    return f"{text} [{_fmt(low, digits, sign=True)}, {_fmt(high, digits, sign=True)}]"


def _p_cell(rec: dict) -> str:
    p, n = float(rec["p_value"]), int(rec["n_pairs"])
    if not math.isnan(p):
        return "<0.001" if p < 0.001 else f"{p:.3f}"
    if n == 1:
        return "1 seed: no test"
    if n > 1:  # identical differences: the t statistic is undefined
        return "sd 0: no test"
    return "–"


def _range(values: pd.Series, unit: str = "") -> str | None:
    """"3 seeds" or "1–3 seeds (by row)" from per-row counts; None when every count is 0."""
    counts = sorted({int(n) for n in values if n > 0})
    if not counts:
        return None
    number = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return " ".join([number, *([unit] if unit else []), *(["(by row)"] if len(counts) > 1 else [])])


def _note(block: pd.DataFrame, dataset: str, reference: str, replicates: int | None) -> str:
    """What one table holds (data set, seeds, images) and what both intervals mean."""
    seeds = _range(block["n_seeds"], "seeds") or "no seeds"
    images = _range(block["n_images"], "images") if "n_images" in block.columns else None
    pairs = _range(block["n_pairs"]) if "n_pairs" in block.columns else None
    lines = [
        f"{_dataset_title(dataset)}: {seeds}, {images or 'images not counted (no per-image pixel counts)'}.",
        f"Δ: paired difference to the {reference} student over seeds "
        "(mean ± sd [95% CI, t distribution]); p: two-sided paired t-test. "
        f"n seeds: {pairs or 'none'}. "
        "This interval is over training seeds: how much the difference depends on the seed.",
    ]
    if "boot_ci_low" in block.columns:
        if images:
            lines.append(
                f"Δ 95% CI (images): paired bootstrap over the {images.removesuffix(' (by row)')} "
                f"({replicates or '?'} replicates; the same resampled images for both networks and every seed; "
                "IoU and Dice pooled over each seed's resampled images from pixel counts at threshold 0.5, "
                "the per-seed differences averaged over seeds; 2.5th and 97.5th percentiles): how much the "
                "difference depends on which images were scored; a difference resting on one image gets a wide interval."
            )
        else:
            lines.append("Δ 95% CI (images): none, no per-image pixel counts for this data set.")
    if KEPT_START in block.columns and block[KEPT_START].fillna("").astype(str).ne("").any():
        lines.append("kept start: k/n: k of the n seeds kept their starting weights "
                     "(no fine-tuning epoch beat the start on the validation split).")
    return "\n".join(lines)


def _purpose_line(summary: pd.DataFrame) -> str | None:
    purpose = summary.attrs.get("purpose")
    if purpose is None:
        return None
    if purpose == SELECTION:
        return PURPOSE_LINES[SELECTION]
    datasets = set(summary[DATASET]) if DATASET in summary.columns else {TEST_SET}
    sets = "test split" if datasets <= {TEST_SET} else "test split and external sets"
    return PURPOSE_LINES[REPORT].format(sets=sets)


def to_markdown(summary: pd.DataFrame, digits: int = 3) -> str:
    """Render ``summarize()`` output as GitHub Markdown tables, each followed by a note.

    With ``summary.attrs["purpose"]`` (``summary_table``) the text starts with one line
    saying whether it is the selection (validation) or the report (test) table. One table
    per data set, under a heading naming it when there are several (the test split first).
    Columns: model | condition | metric | mean ± sd | Δ vs <reference> | p (paired t) |
    [Δ 95% CI (images) |] seed values; the images column only when the summary has the
    ``with_image_bootstrap`` columns. A missing number shows as "–"; with one seed only the
    mean is shown. The Δ cell is ``mean ± sd [CI low, CI high]`` with explicit signs, just
    the difference with one paired seed; the p cell says why there is no test when there is
    a comparison but no p-value. Seed values are listed in seed order, separated by commas.
    A network with ``kept_start`` (``with_kept_start``) shows it as "condition (kept start:
    k/n)" instead of a metric row. The note under each table (after a blank line, so that it
    is not read as a table row) names the data set, seeds and images and explains Δ, p and
    both intervals.
    """
    reference = summary.attrs.get("reference", "baseline")
    datasets = _order(summary[DATASET]) if DATASET in summary.columns else [TEST_SET]
    purpose = _purpose_line(summary)
    blocks = [purpose] if purpose else []
    if not datasets:
        split = "validation split" if summary.attrs.get("purpose") == SELECTION else "test split"
        blocks.append(f"No {split} results.")
    for dataset in datasets:
        rows = summary[summary[DATASET] == dataset] if DATASET in summary.columns else summary
        table = _markdown_table(rows, reference, digits)
        note = _note(rows, dataset, reference, summary.attrs.get("replicates"))
        heading = [] if len(datasets) == 1 else [f"### {_dataset_title(dataset)}"]
        blocks.append("\n\n".join([*heading, table, note]))
    return "\n\n".join(blocks) + "\n"


def _dataset_title(dataset: str) -> str:
    if dataset == TEST_SET:
        return "Test split"
    return "Validation split" if dataset == VAL_SET else f"External set: {dataset}"


def _condition_cell(rec: dict) -> str:
    kept = rec.get(KEPT_START)
    text = str(rec["condition"])
    if isinstance(kept, str) and kept:
        text = f"{text} (kept start: {kept})"
    return _cell(text)


def _boot_cell(rec: dict, digits: int) -> str:
    low, high = float(rec["boot_ci_low"]), float(rec["boot_ci_high"])
    if math.isnan(low):
        return "–"
    return f"[{_fmt(low, digits, sign=True)}, {_fmt(high, digits, sign=True)}]"


def _markdown_table(summary: pd.DataFrame, reference: str, digits: int) -> str:
    seed_cols = [c for c in summary.columns if str(c).startswith("seed_")]
    boot = "boot_ci_low" in summary.columns
    header = ["model", "condition", "metric", "mean ± sd", f"Δ vs {reference}", "p (paired t)",
              *(["Δ 95% CI (images)"] if boot else []), "seed values"]  # fmt: skip
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    # kept_start is shown on the condition cell, as k/n, not as a mean ± sd of 0/1 flags
    shown = summary[summary["metric"] != KEPT_START]
    for rec in shown.to_dict(orient="records"):
        seeds = ", ".join(_fmt(float(rec[c]), digits) for c in seed_cols)
        cells = [
            _cell(rec["model"]),
            _condition_cell(rec),
            _cell(rec["metric"]),
            _pm(float(rec["mean"]), float(rec["sd"]), digits),
            _delta_cell(rec, digits),
            _p_cell(rec),
            *([_boot_cell(rec, digits)] if boot else []),
            seeds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_long_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate long-format CSVs, checking each has the columns of the long format.

    Raises ``ValueError`` naming the file when a column is missing or a value is not
    numeric. The result has the ``dataset`` column first ("test" where a file has none);
    other extra columns are dropped. An empty list gives an empty long table.
    """
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        _check_long(frame, source=str(path))
        frame = with_dataset(frame)[[DATASET, *LONG_COLUMNS]].copy()
        value = pd.to_numeric(frame["value"], errors="coerce")
        bad = value.isna() & frame["value"].notna()
        if bad.any():
            raise ValueError(f"{path}: non-numeric value {frame['value'][bad].iloc[0]!r}")
        frame["value"] = value.astype(np.float64)
        frames.append(frame)
    if not frames:
        dtypes = {c: float if c == "value" else object for c in [DATASET, *LONG_COLUMNS]}
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    return pd.concat(frames, ignore_index=True)
