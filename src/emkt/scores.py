"""Scores from confusion counts, in NumPy alone: what emkt.metrics builds on, and what jobs that
do not import torch (the figures) score masks with. The conventions for empty denominators are
emkt.metrics'."""

from __future__ import annotations

import numpy as np


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
