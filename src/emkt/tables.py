"""Summary tables over seeds from the long results format.

The long format has one row per ``model, condition, seed, metric, value``, for example
``("student", "baseline", 0, "iou", 0.61)`` or ``("teacher", "joint", 0, "mae", 0.05)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["LONG_COLUMNS", "read_long_tables", "summarize", "to_markdown"]

LONG_COLUMNS = ["model", "condition", "seed", "metric", "value"]
KEYS = ["model", "condition", "metric"]
# paired differences to the reference condition only make sense for the student
DELTA_MODEL = "student"


def _check_long(long: pd.DataFrame, source: str = "long table") -> None:
    missing = [c for c in LONG_COLUMNS if c not in long.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected {LONG_COLUMNS}, got {list(long.columns)}"
        )


def _order(values: pd.Series) -> list:
    """Distinct values in order of first appearance."""
    return list(pd.unique(values))


def _mean_sd(values: np.ndarray) -> tuple[float, float, int]:
    values = values[np.isfinite(values)]
    n = int(values.size)
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std(ddof=1)) if n > 1 else float("nan")
    return mean, sd, n


def summarize(long: pd.DataFrame, reference: str = "baseline") -> pd.DataFrame:
    """Mean and spread over seeds, one row per (model, condition, metric).

    Columns: ``model, condition, metric, n_seeds, mean, sd, delta_mean, delta_sd`` and one
    ``seed_<s>`` column per seed (sorted; NaN where a seed is missing). ``mean``/``sd``
    (ddof=1, NaN with one seed) and ``n_seeds`` count only finite values. For student rows,
    ``delta_*`` summarise the per-seed paired differences ``condition - reference``, over
    seeds present in both; they are NaN for the reference itself, for teacher rows and when
    the reference is missing. Rows are ordered by model, condition and metric, each in order
    of first appearance. The reference name is kept in ``summary.attrs["reference"]``.
    """
    _check_long(long)
    long = long[LONG_COLUMNS].copy()
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    dup = long.duplicated(subset=["model", "condition", "seed", "metric"], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        raise ValueError(
            f"duplicate rows for model={first['model']!r}, condition={first['condition']!r}, "
            f"seed={first['seed']!r}, metric={first['metric']!r}"
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
    for model, condition, metric in keys:
        per_seed = wide.loc[(model, condition, metric)].to_numpy(dtype=np.float64)
        mean, sd, n = _mean_sd(per_seed)
        delta_mean = delta_sd = float("nan")
        ref_key = (model, reference, metric)
        if model == DELTA_MODEL and condition != reference and ref_key in wide.index:
            diffs = per_seed - wide.loc[ref_key].to_numpy(dtype=np.float64)
            delta_mean, delta_sd, _ = _mean_sd(diffs)
        rows.append(
            {
                "model": model,
                "condition": condition,
                "metric": metric,
                "n_seeds": n,
                "mean": mean,
                "sd": sd,
                "delta_mean": delta_mean,
                "delta_sd": delta_sd,
                **dict(zip(seed_cols, per_seed)),
            }
        )
    columns = [*KEYS, "n_seeds", "mean", "sd", "delta_mean", "delta_sd", *seed_cols]
    summary = pd.DataFrame(rows, columns=columns)
    summary.attrs["reference"] = reference
    return summary


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


def to_markdown(summary: pd.DataFrame, digits: int = 3) -> str:
    """Render ``summarize()`` output as a GitHub Markdown table.

    Columns: model | condition | metric | mean ± sd | Δ vs <reference> | seed values. A
    missing number shows as "–"; with one seed only the mean is shown; the delta carries an
    explicit sign; seed values are listed in seed order, separated by commas.
    """
    reference = summary.attrs.get("reference", "baseline")
    seed_cols = [c for c in summary.columns if str(c).startswith("seed_")]
    header = ["model", "condition", "metric", "mean ± sd", f"Δ vs {reference}", "seed values"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * 3) + "|",
    ]
    for rec in summary.to_dict(orient="records"):
        seeds = ", ".join(_fmt(float(rec[c]), digits) for c in seed_cols)
        cells = [
            _cell(rec["model"]),
            _cell(rec["condition"]),
            _cell(rec["metric"]),
            _pm(float(rec["mean"]), float(rec["sd"]), digits),
            _pm(float(rec["delta_mean"]), float(rec["delta_sd"]), digits, sign=True),
            seeds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_long_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate long-format CSVs, checking each has the columns of the long format.

    Raises ``ValueError`` naming the file when a column is missing or a value is not
    numeric. Extra columns are dropped. An empty list gives an empty long table.
    """
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        _check_long(frame, source=str(path))
        frame = frame[LONG_COLUMNS].copy()
        value = pd.to_numeric(frame["value"], errors="coerce")
        bad = value.isna() & frame["value"].notna()
        if bad.any():
            raise ValueError(f"{path}: non-numeric value {frame['value'][bad].iloc[0]!r}")
        frame["value"] = value.astype(np.float64)
        frames.append(frame)
    if not frames:
        dtypes = {c: float if c == "value" else object for c in LONG_COLUMNS}
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    return pd.concat(frames, ignore_index=True)
