"""Review curves: how fast an order of images (or objects) finds a segmentation's errors, and
the proofreading table over seeds. NumPy, pandas and SciPy only (the report jobs use it);
the teacher's side is emkt.proofread.

A review curve follows a proofreader who checks the items of a set (images, or predicted
objects) from the highest score down: after k of n items it has found the fraction F(k) of
all wrong units (the wrongly classified pixels of the checked images, or the wrong objects
checked). Items with equal scores are checked in random order, so a group of ties
contributes its expected count (the group's mean per item): an order that gives every item
the same score is random order, whose expected curve is F(k) = k/n exactly. The area under
the curve (``review_area``: trapezoids over x = k/n, y = F(k), both in [0, 1]) is then 0.5
for random order, and approaches 1 for an order that puts all errors first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .tables import CONFIDENCE, paired_difference

# Where curves are kept for the figure: the fraction of items reviewed, every 2%.
CURVE_POINTS = np.linspace(0.0, 1.0, 51)
# Proofreaders beside the teachers: the student's own uncertainty 1 - max(p, 1 - p), random
# order (its expected curve) and the oracle (the true number of wrong units; the best order).
UNCERTAINTY, RANDOM, ORACLE = "uncertainty", "random", "oracle"
BASELINES = (UNCERTAINTY, RANDOM, ORACLE)
# The long format of the proofreading results (one file per external set and seed).
PROOFREADING_COLUMNS = ["dataset", "student", "proofreader", "seed", "metric", "value"]
CURVE_COLUMNS = ["dataset", "student", "proofreader", "seed", "level", "reviewed", "found"]
# Levels of review: images (counting wrong pixels), predicted objects (counting unmatched ones).
LEVELS = {"pixels": ("images reviewed", "wrong pixels found"),
          "objects": ("predicted objects reviewed", "wrong objects found")}
METRIC_TEXT = {
    "aurc_pixels": "area under the review curve of images (wrong pixels found)",
    "aurc_objects": "area under the review curve of predicted objects (unmatched objects found)",
    "spearman": "Spearman correlation of the predicted with the true per-image loss",
    "pixel_auroc": "AUROC of the per-pixel score for the wrongly classified pixels",
}


def review_curve(scores: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """F(0..n): the fraction of all wrong units found after reviewing the first k of n items,
    from the highest score down, ties at their expected value (module docstring). All NaN
    when nothing is wrong (there is nothing to find); an empty set gives [0]."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    wrong = np.asarray(wrong, dtype=np.float64).ravel()
    if scores.shape != wrong.shape:
        raise ValueError(f"scores and wrong counts differ in size: {scores.size} vs {wrong.size}")
    if np.isnan(scores).any():
        raise ValueError("review scores must not be NaN")
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_wrong = scores[order], wrong[order]
    groups = np.split(ranked_wrong, np.flatnonzero(np.diff(ranked_scores) != 0) + 1)
    expected = np.concatenate([np.full(group.size, group.mean()) for group in groups if group.size] or [[]])
    total = expected.sum()
    if scores.size and total <= 0:
        return np.full(scores.size + 1, np.nan)
    return np.concatenate([[0.0], np.cumsum(expected) / (total if total > 0 else 1.0)])


def review_area(curve: np.ndarray) -> float:
    """The area under a review curve F(0..n) over x = k/n (trapezoids): 0.5 for random
    order; NaN for a NaN curve or an empty set."""
    curve = np.asarray(curve, dtype=np.float64)
    n = curve.size - 1
    if n < 1 or np.isnan(curve).any():
        return float("nan")
    return float((curve[:-1] + curve[1:]).sum() / (2 * n))


def on_grid(curve: np.ndarray, points: np.ndarray = CURVE_POINTS) -> np.ndarray:
    """A review curve F(0..n) linearly interpolated at fractions ``points`` of the items."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 2:
        return np.full(len(points), np.nan)
    return np.interp(points, np.linspace(0.0, 1.0, curve.size), curve)


def examples_from_arrays(arrays: dict[str, np.ndarray]) -> list[dict]:
    """The examples of emkt.proofread.review_examples' arrays (an .npz) as emkt.plots.plot_review_examples takes them."""
    return [{"name": str(name), "image": arrays[f"image_{k}"].astype(np.float32), "mask": arrays[f"mask_{k}"],
             "error": arrays[f"error_{k}"].astype(np.float32) if f"error_{k}" in arrays else None,
             "wrong": arrays[f"wrong_{k}"], "predicted_loss": float(arrays["predicted_loss"][k])}
            for k, name in enumerate(arrays["names"])]


def curve_rows(curve: np.ndarray, **keys: object) -> pd.DataFrame:
    """A review curve on the grid as rows of the curve table (``CURVE_COLUMNS``)."""
    return pd.DataFrame({**keys, "reviewed": CURVE_POINTS, "found": on_grid(curve)})


# --- the proofreading table ------------------------------------------------------------------------


def proofreading_table(long: pd.DataFrame, versus: str = UNCERTAINTY) -> pd.DataFrame:
    """One row per (dataset, student, proofreader, metric) of the proofreading results
    (``PROOFREADING_COLUMNS``, several seeds): ``n_seeds``, ``mean``, ``sd`` (ddof=1),
    ``ci_low``, ``ci_high`` (95% t interval of the mean over seeds), the paired comparison
    with the proofreader ``versus`` on the same student and seeds (emkt.tables.paired_difference:
    ``delta_mean`` ... ``n_pairs``; none for ``versus`` itself, random order and the oracle)
    and ``seed_<s>`` values. Rows keep the order of first appearance."""
    missing = [c for c in PROOFREADING_COLUMNS if c not in long.columns]
    if missing:
        raise ValueError(f"proofreading results lack columns {missing}; expected {PROOFREADING_COLUMNS}")
    keys = ["dataset", "student", "proofreader", "metric"]
    long = long.assign(value=pd.to_numeric(long["value"], errors="coerce"))
    seeds = sorted(pd.unique(long["seed"]))
    wide = long.pivot_table(index=keys, columns="seed", values="value", aggfunc="first", sort=False,
                            dropna=False).reindex(columns=seeds)
    rows = []
    for key in long[keys].drop_duplicates().itertuples(index=False, name=None):
        values = wide.loc[key].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        n = int(finite.size)
        mean = float(finite.mean()) if n else float("nan")
        sd = float(finite.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n) if n > 1 and sd > 0 else float("nan")
        if n > 1 and sd == 0:
            half = 0.0
        reference = (key[0], key[1], versus, key[3])
        compared = key[2] not in BASELINES and reference in wide.index
        delta = paired_difference(values, wide.loc[reference].to_numpy(dtype=np.float64)) if compared else \
            paired_difference(np.array([]), np.array([]))
        rows.append({**dict(zip(keys, key)), "n_seeds": n, "mean": mean, "sd": sd, "ci_low": mean - half,
                     "ci_high": mean + half, **delta, **{f"seed_{s}": v for s, v in zip(seeds, values)}})
    table = pd.DataFrame(rows)
    table.attrs["versus"] = versus
    return table


def proofreading_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """The proofreading table as Markdown: one table per data set, each with a note on what
    the numbers are; a line saying so when there is nothing to show."""
    versus = table.attrs.get("versus", UNCERTAINTY)
    lines = ["Proofreading (external labelled sets, never seen in training): how fast each proofreader's "
             "order finds the students' errors."]
    if table.empty:
        return "\n\n".join([*lines, "No external labelled set with teachers: nothing measured."]) + "\n"
    seed_cols = [c for c in table.columns if str(c).startswith("seed_")]
    for dataset, block in table.groupby("dataset", sort=False):
        header = ["student", "proofreader", "metric", "mean ± sd [95% CI]", f"Δ vs {versus} [95% CI]", "p (paired t)",
                  "seed values"]
        rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|"]
        for rec in block.to_dict(orient="records"):
            rows.append("| " + " | ".join([
                str(rec["student"]), str(rec["proofreader"]), str(rec["metric"]), _mean_cell(rec, digits),
                _delta_cell(rec, digits), _p_cell(rec), ", ".join(_fmt(rec[c], digits) for c in seed_cols)]) + " |")
        seeds = sorted({int(n) for n in block["n_seeds"] if n > 0})
        counted = ("no seeds" if not seeds else f"{seeds[0]} seeds" if len(seeds) == 1
                   else f"{seeds[0]}–{seeds[-1]} seeds (by row)")
        note = (f"External set: {dataset}; {counted}. Review curve: items reviewed from the highest score down (ties in random order), "
                "x the fraction of items reviewed, y the fraction of all wrong units found; its area (aurc) is 0.5 "
                "for random order and near 1 when all errors come first (oracle: the best order). "
                f"Wrong pixels: (p ≥ threshold) ≠ label; wrong objects: predicted objects matched to no true "
                f"object at IoU ≥ 0.5. {UNCERTAINTY}: the student's own 1 − max(p, 1 − p). "
                f"Δ: paired difference to {versus} over seeds (t interval); the CI of the mean is over seeds too.")
        lines.append("\n\n".join([f"### External set: {dataset}", "\n".join(rows), note]))
    return "\n\n".join(lines) + "\n"


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    x = float(x)
    if math.isnan(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mean_cell(rec: dict, digits: int) -> str:
    text = _fmt(rec["mean"], digits)
    if not math.isnan(float(rec["sd"])):
        text += f" ± {_fmt(rec['sd'], digits)}"
    if not math.isnan(float(rec["ci_low"])):
        text += f" [{_fmt(rec['ci_low'], digits)}, {_fmt(rec['ci_high'], digits)}]"
    return text


def _delta_cell(rec: dict, digits: int) -> str:
    text = _fmt(rec["delta_mean"], digits, sign=True)
    if not math.isnan(float(rec["delta_ci_low"])):
        text += f" [{_fmt(rec['delta_ci_low'], digits, sign=True)}, {_fmt(rec['delta_ci_high'], digits, sign=True)}]"
    return text


def _p_cell(rec: dict) -> str:
    p = float(rec["p_value"])
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
