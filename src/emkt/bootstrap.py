"""Paired bootstrap over test images for the difference of two networks' pooled metrics.

The t interval over seeds says how much a difference depends on the training seed; it says
nothing about the few test images every seed is scored on. Here the images are resampled
with replacement, the same resampled images for both networks and for every seed of one
replicate (each image keeps its pair), the pooled metric is recomputed per seed from the
per-image pixel counts, and the per-seed differences are averaged over seeds. A difference
carried by one image then shows as a wide interval.

Per-image tables (``*_per_image.csv``) have one row per scored image: ``dataset, model,
condition, seed, name`` and the confusion counts ``tp, fp, fn, tn`` at threshold 0.5 over
labelled pixels, besides per-image metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BOOTSTRAP_METRICS", "COUNT_COLUMNS", "IMAGE_KEYS", "count_arrays", "paired_image_bootstrap",
           "pooled_metric", "read_per_image_tables"]

IMAGE_KEYS = ["dataset", "model", "condition", "seed", "name"]
# tn is not needed by IoU or Dice, but is part of the per-image tables
COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]
BOOTSTRAP_METRICS = ("iou", "dice")
CONFIDENCE = 0.95


def pooled_metric(metric: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """IoU = tp / (tp + fp + fn) or Dice = 2 tp / (2 tp + fp + fn) of summed counts,
    elementwise; NaN where the denominator is 0 (no foreground predicted or labelled)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    if metric == "iou":
        num, den = tp, tp + fp + fn
    elif metric == "dice":
        num, den = 2 * tp, 2 * tp + fp + fn
    else:
        raise ValueError(f"no pooled formula for metric {metric!r}; known: {list(BOOTSTRAP_METRICS)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def paired_image_bootstrap(counts: np.ndarray, reference: np.ndarray, metric: str, replicates: int = 2000,
                           seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the seed-averaged difference ``counts - reference`` of a pooled metric.

    ``counts`` and ``reference`` have shape (seeds, images, 3): tp, fp, fn per seed and image,
    the same seeds and images in the same order. Each replicate draws image indices with
    replacement once (``np.random.default_rng(seed)``) and uses them for both networks and
    every seed; per seed the metric is pooled over the drawn images (an image drawn twice
    counts twice), the per-seed differences are averaged over the seeds where both are defined,
    and the interval is the (1 - confidence)/2 and (1 + confidence)/2 percentiles (numpy's
    linear interpolation) of the replicates that are defined. NaN, NaN without images or seeds.
    """
    counts = np.asarray(counts, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if counts.shape != reference.shape or counts.ndim != 3 or counts.shape[2] != 3:
        raise ValueError(f"expected two (seeds, images, 3) arrays of one shape, got {counts.shape} and {reference.shape}")
    seeds, images, _ = counts.shape
    if seeds == 0 or images == 0 or replicates < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, images, size=(replicates, images))
    # how often each image is drawn per replicate: (replicates, images)
    weights = np.bincount((np.arange(replicates)[:, None] * images + drawn).ravel(),
                          minlength=replicates * images).reshape(replicates, images).astype(np.float64)
    # summed counts per replicate and seed: (replicates, seeds, 3)
    sums = np.einsum("ri,sic->rsc", weights, counts)
    ref_sums = np.einsum("ri,sic->rsc", weights, reference)
    diffs = pooled_metric(metric, *np.moveaxis(sums, -1, 0)) - pooled_metric(metric, *np.moveaxis(ref_sums, -1, 0))
    defined = np.isfinite(diffs)
    n = defined.sum(axis=1)
    averaged = np.where(defined, diffs, 0.0).sum(axis=1) / np.where(n > 0, n, 1)
    averaged = averaged[n > 0]
    if averaged.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(averaged, [tail, 100 - tail])
    return float(low), float(high)


def count_arrays(per_image: pd.DataFrame, dataset: str, network: tuple[str, str],
                 reference: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, int]:
    """tp, fp, fn of two (model, condition) networks on one data set as (seeds, images, 3) arrays.

    Only the seeds both networks have, and the images (by name) that every one of those seeds
    of both networks scored, are kept, so that every pair and every seed sees the same images.
    Returns the two arrays and the number of images.
    """
    rows = per_image[per_image["dataset"] == dataset]

    def pick(model_condition: tuple[str, str]) -> pd.DataFrame:
        model, condition = model_condition
        return rows[(rows["model"] == model) & (rows["condition"] == condition)]

    mine, theirs = pick(network), pick(reference)
    seeds = sorted(set(mine["seed"]) & set(theirs["seed"]))
    names: set | None = None
    for frame in (mine, theirs):
        for s in seeds:
            scored = set(frame.loc[frame["seed"] == s, "name"])
            names = scored if names is None else names & scored
    names_sorted = sorted(names or ())

    def stack(frame: pd.DataFrame) -> np.ndarray:
        indexed = frame.set_index(["seed", "name"])[["tp", "fp", "fn"]]
        full = pd.MultiIndex.from_product([seeds, names_sorted], names=["seed", "name"])
        return indexed.reindex(full).to_numpy(dtype=np.float64).reshape(len(seeds), len(names_sorted), 3)

    return stack(mine), stack(theirs), len(names_sorted)


def read_per_image_tables(paths: list[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """The ``IMAGE_KEYS`` and tp, fp, fn of every per-image CSV that has them.

    Files without those columns (written before the counts were added) are skipped and
    returned by name, so that the bootstrap is left out for them instead of failing. Rows
    without a data set are the test split. Raises ``ValueError`` naming the file on duplicate
    images or non-numeric counts.
    """
    needed = [*IMAGE_KEYS, "tp", "fp", "fn"]
    frames, skipped = [], []
    for path in paths:
        frame = pd.read_csv(path)
        if any(c not in frame.columns for c in needed):
            skipped.append(str(path))
            continue
        frame = frame[needed].assign(dataset=frame["dataset"].fillna("test").astype(str))
        counts = frame[["tp", "fp", "fn"]].apply(pd.to_numeric, errors="coerce")
        if counts.isna().to_numpy().any():
            raise ValueError(f"{path}: missing or non-numeric pixel counts")
        frame[["tp", "fp", "fn"]] = counts.astype(np.float64)
        if frame.duplicated(subset=IMAGE_KEYS).any():
            raise ValueError(f"{path}: an image is listed twice")
        frames.append(frame)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("tp", "fp", "fn") else object) for c in needed}), skipped
    return pd.concat(frames, ignore_index=True), skipped
