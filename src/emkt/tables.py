"""Summary tables over seeds from the long results format.

The long format has one row per ``model, condition, seed, metric, value``, for example
``("student", "baseline", 0, "iou", 0.61)`` or ``("teacher", "joint", 0, "mae", 0.05)``.
``model`` is "student" (the segmentation students), "reference" (segmentation networks
that serve as references, e.g. an ensemble) or "teacher" (loss predictors). An optional
``dataset`` column says which images were scored: "test" (the test split, also where the
column is missing) or the name of an external labelled set; every data set is summarised
on its own, each compared with the reference student on the same images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["DATASET", "LONG_COLUMNS", "TEST_SET", "paired_difference", "read_long_tables", "summarize",
           "to_long", "to_markdown", "with_dataset"]

LONG_COLUMNS = ["model", "condition", "seed", "metric", "value"]
# optional first column of the long format: the images scored ("test" when absent)
DATASET = "dataset"
TEST_SET = "test"
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
    - ``seed_<s>``: the value per seed (sorted; NaN where a seed is missing).

    Only "student" and "reference" rows are compared; the delta columns are NaN for teacher
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
        compared = model in COMPARED_MODELS and (model, condition) != ref_key[1:3]
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
    return summary


def compare_students(long: pd.DataFrame, conditions: list[str], metrics: list[str], reference: str) -> pd.DataFrame:
    """``summarize`` of some student rows and metrics against another reference student, e.g.
    the expansion variants against the joint student they all start from."""
    _check_long(long)
    chosen = long[(long["model"] == REFERENCE_MODEL) & long["condition"].isin([reference, *conditions])
                  & long["metric"].isin(metrics)]
    return summarize(chosen, reference=reference)


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


def _note(summary: pd.DataFrame, reference: str) -> str:
    pairs = sorted({int(n) for n in summary["n_pairs"] if n > 0})
    if not pairs:
        n_text = "none"
    elif len(pairs) == 1:
        n_text = str(pairs[0])
    else:
        n_text = f"{pairs[0]}–{pairs[-1]}, by row"
    return (
        f"Δ: paired difference to the {reference} student over seeds "
        "(mean ± sd [95% CI, t distribution]); p: two-sided paired t-test. "
        f"n seeds: {n_text}."
    )


def to_markdown(summary: pd.DataFrame, digits: int = 3) -> str:
    """Render ``summarize()`` output as GitHub Markdown tables followed by a one-line note.

    One table per data set, under a heading naming it when there are several (the test
    split first). Columns: model | condition | metric | mean ± sd | Δ vs <reference> |
    p (paired t) | seed values. A missing number shows as "–"; with one seed only the mean
    is shown. The Δ cell is ``mean ± sd [CI low, CI high]`` with explicit signs, just the
    difference with one paired seed; the p cell says why there is no test when there is a
    comparison but no p-value. Seed values are listed in seed order, separated by commas.
    The note under the tables (after a blank line, so that it is not read as a table row)
    explains Δ and p.
    """
    reference = summary.attrs.get("reference", "baseline")
    datasets = _order(summary[DATASET]) if DATASET in summary.columns else [TEST_SET]
    blocks = []
    for dataset in datasets:
        rows = summary[summary[DATASET] == dataset] if DATASET in summary.columns else summary
        table = _markdown_table(rows, reference, digits)
        blocks.append(table if len(datasets) == 1 else f"### {_dataset_title(dataset)}\n\n{table}")
    return "\n\n".join(blocks) + "\n\n" + _note(summary, reference) + "\n"


def _dataset_title(dataset: str) -> str:
    return "Test split" if dataset == TEST_SET else f"External set: {dataset}"


def _markdown_table(summary: pd.DataFrame, reference: str, digits: int) -> str:
    seed_cols = [c for c in summary.columns if str(c).startswith("seed_")]
    header = ["model", "condition", "metric", "mean ± sd", f"Δ vs {reference}", "p (paired t)",
              "seed values"]  # fmt: skip
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|",
    ]
    for rec in summary.to_dict(orient="records"):
        seeds = ", ".join(_fmt(float(rec[c]), digits) for c in seed_cols)
        cells = [
            _cell(rec["model"]),
            _cell(rec["condition"]),
            _cell(rec["metric"]),
            _pm(float(rec["mean"]), float(rec["sd"]), digits),
            _delta_cell(rec, digits),
            _p_cell(rec),
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
