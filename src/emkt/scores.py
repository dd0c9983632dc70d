"""Scores in NumPy and SciPy alone: from confusion counts, of masks, of a teacher's predicted
losses. emkt.metrics builds on them; the jobs that import no torch (the figures) use them
directly. The conventions for empty denominators are emkt.metrics'."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else float(empty)


def segmentation_scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """IoU, Dice, accuracy, precision and recall from confusion counts (emkt.metrics' conventions)."""
    total = tp + fp + fn + tn
    both_empty = 1.0 if total > 0 else np.nan  # no pixel counted: nothing to score
    return {
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "accuracy": _ratio(tp + tn, total, np.nan),
        "precision": _ratio(tp, tp + fp, np.nan),
        "recall": _ratio(tp, tp + fn, np.nan),
    }


def mask_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``segmentation_scores`` of a binary mask against a binary ground truth (any shape)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    tp = float(np.count_nonzero(predicted & truth))
    fp = float(np.count_nonzero(predicted & ~truth))
    fn = float(np.count_nonzero(~predicted & truth))
    return segmentation_scores(tp, fp, fn, float(predicted.size) - tp - fp - fn)


def teacher_agreement(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Agreement of the teacher's predicted per-image losses with the true ones.

    Returns ``mae``, ``spearman`` and ``pearson``. Pairs where either value is not finite are
    dropped; the correlations are NaN (silently) when fewer than two distinct values remain
    on either side, and every entry is NaN when no pair remains.
    """
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if predicted.shape != true.shape:
        raise ValueError(f"predicted and true differ in size: {predicted.size} vs {true.size}")
    keep = np.isfinite(predicted) & np.isfinite(true)
    predicted, true = predicted[keep], true[keep]
    nan = float("nan")
    if predicted.size == 0:
        return {"mae": nan, "spearman": nan, "pearson": nan}
    mae = float(np.mean(np.abs(predicted - true)))
    # a constant side makes both correlations undefined; scipy would warn on every call
    if np.unique(predicted).size < 2 or np.unique(true).size < 2:
        return {"mae": mae, "spearman": nan, "pearson": nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        spearman = float(stats.spearmanr(predicted, true).statistic)
        pearson = float(stats.pearsonr(predicted, true).statistic)
    return {"mae": mae, "spearman": spearman, "pearson": pearson}
