"""Segmentation and calibration metrics for the student, agreement metrics for the teacher.

``SegmentationMeter`` pools confusion counts and calibration-bin sums over every pixel it
sees (constant memory, images of any size), and also keeps one row of metrics per image.
Pixels outside an optional ``valid`` map (unlabelled regions) are not seen at all.

Conventions for empty denominators (the same pooled and per image):

* IoU and Dice are 1.0 when prediction and ground truth are both empty (``tp+fp+fn == 0``):
  predicting no mitochondria on an image without any is a perfect answer. With no pixel
  counted at all (an image whose pixels are all unlabelled) every score is NaN.
* precision is NaN when nothing is predicted positive (``tp+fp == 0``), recall is NaN when
  the ground truth has no positive pixel (``tp+fn == 0``); means over images can skip them
  with ``nanmean``.
* A pixel is predicted positive when ``prob >= threshold`` (as MONAI's ``AsDiscrete``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from monai.metrics import calibration_binning, get_confusion_matrix

from .scores import _ratio, segmentation_scores, teacher_agreement

__all__ = ["InstanceMeter", "PixelAurocMeter", "ScoreHistogram", "SegmentationMeter", "instance_scores",
           "instances_from_probability", "object_matches", "segmentation_scores", "teacher_agreement"]

# A predicted object matches a true one at IoU >= 0.5 (object F1 "at 0.5", as in panoptic quality).
MATCH_IOU = 0.5


def _calibration_errors(sum_p: np.ndarray, sum_gt: np.ndarray, count: np.ndarray) -> tuple[float, float]:
    """ECE and MCE from per-bin sums of predicted probability, ground truth and pixel counts."""
    filled = count > 0
    n = count.sum()
    if n == 0:
        return float("nan"), float("nan")
    gap = np.abs(sum_gt[filled] / count[filled] - sum_p[filled] / count[filled])
    return float((count[filled] / n * gap).sum()), float(gap.max())


class SegmentationMeter:
    """Accumulates binary segmentation and calibration metrics over many images.

    ``compute()`` pools over all pixels of all images seen; ``per_image()`` gives one row per
    image. Calibration is the positive-class reliability with ``num_bins`` equal-width bins on
    [0, 1]: ECE = sum_b (n_b / N) |mean_gt_b - mean_pred_b|, MCE = the largest gap over
    non-empty bins. See the module docstring for the empty-denominator conventions.
    """

    def __init__(self, threshold: float = 0.5, num_bins: int = 15) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.threshold = float(threshold)
        self.num_bins = int(num_bins)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        # float64 so that pooled counts over many large images stay exact
        self._counts = np.zeros(4, dtype=np.float64)  # tp, fp, fn, tn
        self._bin_p = np.zeros(self.num_bins, dtype=np.float64)
        self._bin_gt = np.zeros(self.num_bins, dtype=np.float64)
        self._bin_n = np.zeros(self.num_bins, dtype=np.float64)
        self._rows: list[dict[str, float | str]] = []

    def update(self, prob: torch.Tensor, target: torch.Tensor, names: list[str] | None = None,
               valid: torch.Tensor | None = None) -> None:
        """Add a batch: ``prob`` (B,1,H,W) probabilities in [0, 1], ``target`` (B,1,H,W) in {0, 1}.

        ``names`` labels the per-image rows; by default ``image_<k>`` with a running index.
        ``valid`` (B,1,H,W) in {0, 1} marks the labelled pixels: the others count nowhere, not
        in the confusion counts, the calibration bins or the per-image fractions.
        Successive batches may have different spatial sizes.
        """
        prob = torch.as_tensor(prob).detach().to("cpu", torch.float32)
        target = torch.as_tensor(target).detach().to("cpu", torch.float32)
        if prob.ndim != 4 or prob.shape[1] != 1 or prob.shape != target.shape:
            raise ValueError(
                f"prob and target must both have shape (B, 1, H, W); got {tuple(prob.shape)} "
                f"and {tuple(target.shape)}"
            )
        if valid is not None and torch.as_tensor(valid).shape != prob.shape:
            raise ValueError(f"valid must have the shape of prob {tuple(prob.shape)}, got {tuple(valid.shape)}")
        if prob.numel() and (prob.min() < 0 or prob.max() > 1 or torch.isnan(prob).any()):
            raise ValueError("prob must be probabilities in [0, 1] (did you pass logits?)")
        if ((target != 0) & (target != 1)).any():
            raise ValueError("target must be binary {0, 1}")
        batch = prob.shape[0]
        if names is None:
            start = len(self._rows)
            names = [f"image_{start + i}" for i in range(batch)]
        elif len(names) != batch:
            raise ValueError(f"got {len(names)} names for a batch of {batch} images")

        if valid is None:
            cm, sum_p, sum_gt, n = self._binned(prob, target)
        else:
            # MONAI's counts and bins take no mask (and calibration_binning does not skip NaN):
            # each image's valid pixels go in alone, as a (1, 1, N) "image"
            keep = torch.as_tensor(valid).detach().to("cpu") > 0
            parts = [self._binned(prob[i][keep[i]].view(1, 1, -1), target[i][keep[i]].view(1, 1, -1))
                     for i in range(batch)] or [self._binned(prob, target)]
            cm, sum_p, sum_gt, n = (np.concatenate(arrays) for arrays in zip(*parts))

        self._counts += cm.sum(axis=0)
        self._bin_p += sum_p.sum(axis=0)
        self._bin_gt += sum_gt.sum(axis=0)
        self._bin_n += n.sum(axis=0)

        for i in range(batch):
            tp, fp, fn, tn = cm[i]
            total = tp + fp + fn + tn
            ece, _ = _calibration_errors(sum_p[i], sum_gt[i], n[i])
            self._rows.append(
                {
                    "name": str(names[i]),
                    "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                    **segmentation_scores(tp, fp, fn, tn),
                    "ece": ece,
                    "foreground_fraction": _ratio(tp + fn, total, np.nan),
                    "predicted_fraction": _ratio(tp + fp, total, np.nan),
                }
            )

    def _binned(self, prob: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, ...]:
        """Per image: confusion counts (tp, fp, fn, tn) and per-bin sums of probability and
        ground truth with the bin counts, as float64 arrays of shape (B, 4) and (B, num_bins)."""
        pred = (prob >= self.threshold).float()
        # MONAI orders the counts as tp, fp, tn, fn; reorder to tp, fp, fn, tn
        cm = get_confusion_matrix(pred, target, include_background=True)[:, 0, :].double().numpy()
        cm = cm[:, [0, 1, 3, 2]]

        mean_p, mean_gt, n = calibration_binning(prob, target, num_bins=self.num_bins)
        n = n[:, 0, :].double().numpy()
        # empty bins are NaN means with zero count: their sums are 0
        sum_p = np.nan_to_num(mean_p[:, 0, :].double().numpy()) * n
        sum_gt = np.nan_to_num(mean_gt[:, 0, :].double().numpy()) * n
        return cm, sum_p, sum_gt, n

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        """Add what ``other`` (same threshold and bins) has seen, e.g. another process's
        share of the images: pooled counts add up exactly, per-image rows follow. Returns self."""
        if (other.threshold, other.num_bins) != (self.threshold, self.num_bins):
            raise ValueError("cannot merge meters with different thresholds or bins")
        self._counts += other._counts
        self._bin_p += other._bin_p
        self._bin_gt += other._bin_gt
        self._bin_n += other._bin_n
        self._rows.extend(other._rows)
        return self

    def compute(self) -> dict[str, float]:
        """Metrics pooled over all pixels seen: iou, dice, accuracy, precision, recall, ece, mce."""
        if not self._rows:
            raise RuntimeError("SegmentationMeter.compute() called before any update()")
        ece, mce = _calibration_errors(self._bin_p, self._bin_gt, self._bin_n)
        return {**segmentation_scores(*self._counts), "ece": ece, "mce": mce}

    def per_image(self) -> pd.DataFrame:
        """One row per image: name, the confusion counts tp, fp, fn, tn (what a bootstrap over
        images resamples), iou, dice, accuracy, precision, recall, ece, fractions."""
        columns = [
            "name", "tp", "fp", "fn", "tn", "iou", "dice", "accuracy", "precision", "recall", "ece",
            "foreground_fraction", "predicted_fraction",
        ]  # fmt: skip
        return pd.DataFrame(self._rows, columns=columns)


class PixelAurocMeter:
    """AUROC of a predicted per-pixel error map as a detector of the wrongly classified pixels
    (``(prob >= threshold) != gt``), pooled over every pixel it sees.

    Scores are counted in fixed bins (``bins`` over [0, ``top``]; the BCE an error-map teacher
    predicts is at most -log(1e-3) ~ 6.9), so memory stays constant for any number of images
    and meters merge across images and ranks. Scores in one bin count as ties (half a correct
    ordering each), so the result can differ from the exact AUROC by at most the fraction of
    pairs that share a bin. NaN when either class is missing.
    """

    def __init__(self, bins: int = 4096, top: float = 7.0) -> None:
        self.edges = np.linspace(0.0, top, bins + 1)
        self.wrong = np.zeros(bins, np.int64)
        self.right = np.zeros(bins, np.int64)

    def update(self, predicted_error: np.ndarray, wrong: np.ndarray, valid: np.ndarray | None = None) -> None:
        keep = np.ones(wrong.shape, bool) if valid is None else valid > 0
        index = np.clip(np.searchsorted(self.edges, np.asarray(predicted_error)[keep], side="right") - 1,
                        0, len(self.wrong) - 1)
        is_wrong = np.asarray(wrong, bool)[keep]
        self.wrong += np.bincount(index[is_wrong], minlength=len(self.wrong))
        self.right += np.bincount(index[~is_wrong], minlength=len(self.right))

    def merge(self, other: PixelAurocMeter) -> PixelAurocMeter:
        """Add another meter's pixels (same bins), e.g. another student's. Returns self."""
        if not np.array_equal(other.edges, self.edges):
            raise ValueError("cannot merge AUROC meters with different bins")
        self.wrong += other.wrong
        self.right += other.right
        return self

    def compute(self) -> float:
        n_wrong, n_right = self.wrong.sum(), self.right.sum()
        if n_wrong == 0 or n_right == 0:
            return float("nan")
        right_below = np.cumsum(self.right) - self.right  # right pixels in lower bins
        ordered = (self.wrong * right_below).sum() + 0.5 * (self.wrong * self.right).sum()
        return float(ordered / (n_wrong * n_right))


class ScoreHistogram:
    """Foreground probabilities of the labelled pixels counted in ``bins`` equal-width bins
    per class: what every threshold-dependent or threshold-free pixel score needs, in constant
    memory for any number of images, mergeable across images and ranks.

    A pixel is predicted foreground at threshold t when its probability is >= t; thresholds
    are taken at bin edges (``thresholds``), so a score at threshold t is exact for t on an
    edge. ``average_precision`` treats the pixels of one bin as ties (one point of the
    precision-recall curve per bin).
    """

    def __init__(self, bins: int = 1000) -> None:
        self.bins = int(bins)
        self.foreground = np.zeros(self.bins, np.int64)
        self.background = np.zeros(self.bins, np.int64)

    def update(self, prob: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None) -> None:
        prob, mask = np.asarray(prob), np.asarray(mask) > 0
        keep = np.ones(prob.shape, bool) if valid is None else np.asarray(valid) > 0
        index = np.clip((prob[keep] * self.bins).astype(np.int64), 0, self.bins - 1)
        is_fg = mask[keep]
        self.foreground += np.bincount(index[is_fg], minlength=self.bins)
        self.background += np.bincount(index[~is_fg], minlength=self.bins)

    @classmethod
    def from_counts(cls, counts: dict[str, list[int]]) -> ScoreHistogram:
        """A histogram from ``counts()`` (e.g. as stored in a checkpoint)."""
        histogram = cls(len(counts["foreground"]))
        histogram.foreground[:] = counts["foreground"]
        histogram.background[:] = counts["background"]
        return histogram

    def counts(self) -> dict[str, list[int]]:
        """The per-bin counts as plain lists (what a checkpoint or JSON file can hold)."""
        return {"foreground": self.foreground.tolist(), "background": self.background.tolist()}

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add another histogram's pixels (same bins). Returns self."""
        if other.bins != self.bins:
            raise ValueError("cannot merge score histograms with different bins")
        self.foreground += other.foreground
        self.background += other.background
        return self

    def thresholds(self) -> np.ndarray:
        """The bin edges inside (0, 1): the thresholds the scores below are exact for."""
        return np.arange(1, self.bins) / self.bins

    def confusion(self, threshold: float) -> tuple[float, float, float, float]:
        """(tp, fp, fn, tn) of ``prob >= threshold`` (rounded to the nearest bin edge)."""
        edge = int(np.clip(round(threshold * self.bins), 0, self.bins))
        tp, fp = float(self.foreground[edge:].sum()), float(self.background[edge:].sum())
        return tp, fp, float(self.foreground.sum()) - tp, float(self.background.sum()) - fp

    def iou(self, threshold: float) -> float:
        return segmentation_scores(*self.confusion(threshold))["iou"]

    def best_threshold(self, low: float = 0.05, high: float = 0.95, step: float = 0.01) -> float:
        """The threshold of the grid ``low..high`` (``step``) with the highest pooled IoU; the one
        nearest 0.5 among equals, so that a flat optimum keeps the usual threshold."""
        grid = np.round(np.arange(low, high + step / 2, step), 6)
        scores = np.array([self.iou(t) for t in grid])
        if not np.isfinite(scores).any():
            return 0.5
        best = np.nanmax(scores)
        candidates = grid[scores >= best - 1e-12]
        return float(candidates[np.argmin(np.abs(candidates - 0.5))])

    def average_precision(self) -> float:
        """Area under the precision-recall curve of foreground pixels, ranked by probability
        (sum over thresholds of recall gain x precision), NaN without foreground pixels."""
        fg, bg = self.foreground[::-1].cumsum(), self.background[::-1].cumsum()  # pixels >= each bin, top first
        total = fg[-1] if fg.size else 0
        if total == 0:
            return float("nan")
        gained = np.diff(np.concatenate([[0], fg]))
        predicted = fg + bg
        precision = np.divide(fg, predicted, out=np.zeros(fg.shape), where=predicted > 0)
        return float((gained / total * precision).sum())

    def confidence_precision(self, confidence: float) -> tuple[float, float, float]:
        """For hard labels (p >= 0.5) kept where ``max(p, 1 - p) >= confidence``: the precision
        of the kept foreground labels, of the kept background labels, and the kept fraction."""
        high = int(np.clip(round(confidence * self.bins), self.bins // 2, self.bins))
        low = self.bins - high  # p <= 1 - confidence
        fg_kept = (self.foreground[high:].sum(), self.background[high:].sum())  # (right, wrong) foreground labels
        bg_kept = (self.background[:low].sum(), self.foreground[:low].sum())
        total = self.foreground.sum() + self.background.sum()
        precision = [_ratio(right, right + wrong, np.nan) for right, wrong in (fg_kept, bg_kept)]
        return precision[0], precision[1], _ratio(sum(fg_kept) + sum(bg_kept), total, np.nan)


def count_objects(binary: np.ndarray) -> int:
    """Connected foreground components (8-connectivity), as users count mitochondria."""
    from scipy import ndimage

    return int(ndimage.label(binary, structure=np.ones((3, 3), dtype=int))[1])


def agreement_with_reference(probs: list[np.ndarray], reference_probs: list[np.ndarray],
                             valids: list[np.ndarray | None] | None = None, threshold: float = 0.5) -> dict[str, float]:
    """How closely a student reproduces another network (e.g. its distillation teacher).

    ``iou_vs_teacher``: IoU of the two binarised masks pooled over all (valid) pixels;
    ``count_diff_vs_teacher``: mean over images of |objects(student) - objects(teacher)|.
    """
    valids = valids or [None] * len(probs)
    intersection = union = 0.0
    differences = []
    for prob, reference, valid in zip(probs, reference_probs, valids):
        mine, theirs = prob >= threshold, reference >= threshold
        keep = np.ones_like(mine) if valid is None else valid.astype(bool)
        intersection += float((mine & theirs & keep).sum())
        union += float(((mine | theirs) & keep).sum())
        differences.append(abs(count_objects(mine & keep) - count_objects(theirs & keep)))
    return {"iou_vs_teacher": _ratio(intersection, union, 1.0),
            "count_diff_vs_teacher": float(np.mean(differences)) if differences else float("nan")}


def instances_from_probability(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Instance labels of a probability map: connected components (8-connectivity) of
    ``prob >= threshold``, without components smaller than ``min_size`` pixels, numbered
    1..n in scan order; 0 is background. int32, the shape of ``prob``."""
    from scipy import ndimage

    labels, count = ndimage.label(np.asarray(prob) >= threshold, structure=np.ones((3, 3), dtype=int))
    if min_size > 1 and count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(count + 1, dtype=np.int32)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = renumber[labels]
    return labels.astype(np.int32)


def object_matches(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                   iou_threshold: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The one-to-one matching of two instance label images (0 = background) behind
    ``instance_scores``: objects are paired by the Hungarian method on their IoU, and a pair
    matches when its IoU is at least ``iou_threshold``. Pixels where ``valid`` is 0 are left
    out of every object. Returns the predicted labels (sorted, without 0), whether each
    matched, the IoU of each with its partner (0 without one) and the number of true objects."""
    from scipy.optimize import linear_sum_assignment

    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"instance images differ in shape: {pred.shape} vs {gt.shape}")
    if valid is not None:
        keep = np.asarray(valid) > 0
        pred, gt = np.where(keep, pred, 0), np.where(keep, gt, 0)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    # contingency table of label pairs, then drop the background row and column
    table = np.zeros((len(pred_ids), len(gt_ids)), dtype=np.int64)
    np.add.at(table, (pred_index.ravel(), gt_index.ravel()), 1)
    pred_objects, gt_objects = pred_ids != 0, gt_ids != 0
    pred_area, gt_area = table.sum(axis=1)[pred_objects], table.sum(axis=0)[gt_objects]
    overlap = table[np.ix_(pred_objects, gt_objects)]
    union = pred_area[:, None] + gt_area[None, :] - overlap
    iou = np.divide(overlap, union, out=np.zeros(overlap.shape), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True) if iou.size else (np.array([], int), np.array([], int))
    partner_iou = np.zeros(int(pred_objects.sum()))
    partner_iou[rows] = iou[rows, cols]
    return pred_ids[pred_objects], partner_iou >= iou_threshold, partner_iou, int(gt_objects.sum())


def instance_scores(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                    iou_threshold: float = MATCH_IOU) -> dict[str, float]:
    """Object-level agreement of two instance label images (0 = background).

    Objects are matched one-to-one by the Hungarian method on their IoU (``object_matches``);
    a pair counts as a true positive when its IoU is at least ``iou_threshold`` (above 0.5
    such pairs are unique, so the matching is the standard panoptic one). Pixels where
    ``valid`` is 0 are left out of every object. Returns the counts ``tp``, ``fp``, ``fn``,
    the summed IoU of the true positives ``iou_sum``, ``object_f1`` = 2TP / (2TP + FP + FN)
    and ``pq`` (panoptic quality) = iou_sum / (TP + FP/2 + FN/2); both are 1 for two empty images.
    """
    _, matched, partner_iou, true_objects = object_matches(pred, gt, valid, iou_threshold)
    tp = int(matched.sum())
    fp, fn = int(matched.size) - tp, true_objects - tp
    iou_sum = float(partner_iou[matched].sum())
    return {"tp": tp, "fp": fp, "fn": fn, "iou_sum": iou_sum, **instance_summary(tp, fp, fn, iou_sum)}


def instance_scores_of_sections(pred_sections: list[np.ndarray], gt_sections: list[np.ndarray],
                                valid_sections: list[np.ndarray | None] | None = None,
                                iou_threshold: float = MATCH_IOU) -> dict[str, float]:
    """``instance_scores`` of objects that span sections: the labels of each section (ids are
    objects of the whole volume) are counted section by section into a table of overlapping
    label pairs, so that only that table, never the volume, is held. Pairs with IoU of at
    least ``iou_threshold`` are matched one-to-one (Hungarian method among them; above 0.5
    such pairs are unique, as in ``instance_scores``)."""
    from scipy.optimize import linear_sum_assignment

    valid_sections = valid_sections or [None] * len(pred_sections)
    counted = []
    for pred, gt, valid in zip(pred_sections, gt_sections, valid_sections):
        pred, gt = np.asarray(pred, dtype=np.int64).ravel(), np.asarray(gt, dtype=np.int64).ravel()
        if valid is not None:
            keep = np.asarray(valid).ravel() > 0
            pred, gt = np.where(keep, pred, 0), np.where(keep, gt, 0)
        key, count = np.unique(pred * (int(gt.max(initial=0)) + 1) + gt, return_counts=True)
        pred_of_key, gt_of_key = np.divmod(key, int(gt.max(initial=0)) + 1)
        counted.append(pd.DataFrame({"pred": pred_of_key, "gt": gt_of_key, "n": count}))
    table = pd.concat(counted).groupby(["pred", "gt"], as_index=False)["n"].sum()
    pred_area, gt_area = table.groupby("pred")["n"].sum(), table.groupby("gt")["n"].sum()
    pred_objects, gt_objects = int((pred_area.index > 0).sum()), int((gt_area.index > 0).sum())
    pairs = table[(table["pred"] > 0) & (table["gt"] > 0)]
    iou = pairs["n"].to_numpy() / (pred_area[pairs["pred"]].to_numpy() + gt_area[pairs["gt"]].to_numpy()
                                   - pairs["n"].to_numpy())
    candidates = pairs.assign(iou=iou)[iou >= iou_threshold]
    tp, iou_sum = 0, 0.0
    if len(candidates):
        preds, pred_index = np.unique(candidates["pred"], return_inverse=True)
        gts, gt_index = np.unique(candidates["gt"], return_inverse=True)
        matrix = np.zeros((len(preds), len(gts)))
        matrix[pred_index, gt_index] = candidates["iou"]
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        matched = matrix[rows, cols] >= iou_threshold
        tp, iou_sum = int(matched.sum()), float(matrix[rows, cols][matched].sum())
    fp, fn = pred_objects - tp, gt_objects - tp
    return {"tp": tp, "fp": fp, "fn": fn, "iou_sum": iou_sum, **instance_summary(tp, fp, fn, iou_sum)}


def instance_summary(tp: float, fp: float, fn: float, iou_sum: float) -> dict[str, float]:
    """Object F1 and panoptic quality from (pooled) counts; 1.0 when there are no objects at all."""
    if tp + fp + fn == 0:
        return {"object_f1": 1.0, "pq": 1.0}
    return {"object_f1": 2 * tp / (2 * tp + fp + fn), "pq": iou_sum / (tp + 0.5 * fp + 0.5 * fn)}


class InstanceMeter:
    """Object F1 and panoptic quality over many images, as users count mitochondria.

    Each probability map becomes instances (``instances_from_probability``: threshold, then
    8-connected components without those below ``min_size`` pixels) that are matched to the
    ground-truth instances (``instance_scores``). ``compute()`` pools the matches of all
    images (PQ over a data set, not a mean of per-image PQ); ``per_image()`` has one row each.
    """

    def __init__(self, threshold: float = 0.5, min_size: int = 0, iou_threshold: float = MATCH_IOU) -> None:
        self.threshold, self.min_size, self.iou_threshold = float(threshold), int(min_size), float(iou_threshold)
        self._counts = np.zeros(4, dtype=np.float64)  # tp, fp, fn, iou_sum
        self._rows: list[dict[str, float | str]] = []

    def update(self, prob: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, name: str | None = None) -> None:
        """Add one image: its probability map and ground-truth instance labels (0 = background)."""
        pred = instances_from_probability(prob, self.threshold, self.min_size)
        scores = instance_scores(pred, gt, valid, self.iou_threshold)
        self._counts += [scores["tp"], scores["fp"], scores["fn"], scores["iou_sum"]]
        self._rows.append({"name": name or f"image_{len(self._rows)}",
                           "objects_true": scores["tp"] + scores["fn"], "objects_predicted": scores["tp"] + scores["fp"],
                           "object_f1": scores["object_f1"], "pq": scores["pq"]})

    def merge(self, other: InstanceMeter) -> InstanceMeter:
        """Add another meter's images (same settings), e.g. another process's share. Returns self."""
        if (other.threshold, other.min_size, other.iou_threshold) != (self.threshold, self.min_size, self.iou_threshold):
            raise ValueError("cannot merge instance meters with different settings")
        self._counts += other._counts
        self._rows.extend(other._rows)
        return self

    def compute(self) -> dict[str, float]:
        """Pooled ``object_f1`` and ``pq``, and the mean absolute error of the object count per image."""
        if not self._rows:
            raise RuntimeError("InstanceMeter.compute() called before any update()")
        rows = pd.DataFrame(self._rows)
        count_error = float((rows["objects_predicted"] - rows["objects_true"]).abs().mean())
        return {**instance_summary(*self._counts), "count_mae": count_error}

    def per_image(self) -> pd.DataFrame:
        """One row per image: name, objects_true, objects_predicted, object_f1, pq."""
        return pd.DataFrame(self._rows, columns=["name", "objects_true", "objects_predicted", "object_f1", "pq"])
