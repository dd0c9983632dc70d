"""How a student stage validates: IoU, Dice, BCE and predicted foreground of the student on
the whole validation images, shared among the processes and merged.

Stages call ``student_validation`` through this module (``validation.student_validation``),
so that one replacement here reaches every stage (the resume tests stop a stage this way).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from ..acceleration import Runtime
from ..distributed import gather, shard
from ..evaluate import score_segmenter
from ..losses import per_image_loss_of_prob
from ..metrics import SegmentationMeter


def student_validation(student: nn.Module, val_items: list[dict], cfg: dict,
                       runtime: Runtime) -> tuple[dict[str, float], list[np.ndarray]]:
    """Validation IoU/Dice on whole validation images, plus this rank's probability maps
    (of ``shard(val_items, runtime.group)``). Each rank scores its share; the pooled counts
    are merged, so the values are those of one process scoring every image."""
    ev = cfg["evaluate"]
    meter, probs = score_segmenter(student, shard(val_items, runtime.group), cfg["input_size"], ev["overlap"],
                                   ev["batch_size"], runtime.device, ev["threshold"], ev["calibration_bins"])
    meters = gather(meter, runtime.group)
    metrics = functools.reduce(SegmentationMeter.merge, meters[1:], meters[0]).compute()
    sums = np.sum(gather(probability_sums(shard(val_items, runtime.group), probs, ev["threshold"],
                                          cfg["train"]["pos_weight"]), runtime.group), axis=0)
    student.train()
    return {"iou": metrics["iou"], "dice": metrics["dice"], "bce": sums[0] / max(sums[2], 1.0),
            "predicted_fraction": sums[1] / max(sums[2], 1.0)}, probs


def probability_sums(items: list[dict], probs: list[np.ndarray], threshold: float, pos_weight: float) -> np.ndarray:
    """Summed pixel loss (the student's BCE with ``pos_weight``, as the teacher predicts it:
    losses.per_image_loss_of_prob), summed predicted-foreground pixels and the pixel count,
    over the labelled pixels of whole images: sums, so that ranks' shares add up."""
    totals = np.zeros(3)
    for item, prob in zip(items, probs):
        keep = item["valid"] > 0 if "valid" in item else np.ones(prob.shape, bool)
        prob_t, mask_t, keep_t = (torch.from_numpy(np.ascontiguousarray(a))[None, None].float()
                                  for a in (prob, item["mask"], keep))
        count = float(keep.sum())
        totals += [float(per_image_loss_of_prob(prob_t, mask_t, pos_weight, valid=keep_t)[0]) * count,
                   float((prob[keep] >= threshold).sum()), count]
    return totals
