"""What the evaluation jobs compute for one seed: every segmentation network's test (and
validation) scores, its scores on an external labelled set, and how well each teacher
predicts the loss of that seed's students.

One job evaluates all networks of a seed: each job starts a Python process that imports
torch and MONAI (seconds), which at demo scale costs more than scoring a network. The
scoring itself is emkt.evaluate; these functions put a network's numbers into the long
format (emkt.tables) that the summary reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from .calibration import calibrate, stored_calibration
from .evaluate import (calibrated_scores, evaluate_segmenter, fine_tuning_scores, pixel_error_auroc,
                       summarise_teacher, teacher_predictions, volume_instance_scores)
from .inference import predict_probability
from .metrics import PixelAurocMeter, agreement_with_reference
from .models import is_dense_teacher
from .proofread import evaluate_proofreading, review_examples
from .tables import to_long

# Validation numbers reported beside the test scores (data set "val"): what defaults are chosen on.
VALIDATION_KEYS = ("iou", "iou_tuned", "ap", "ece", "ece_calibrated", "threshold", "temperature")


@dataclass
class NetworkResult:
    """One network's evaluation: its rows of the long table (test and validation), its
    per-image table (for the image bootstrap) and its test probability maps."""

    long: pd.DataFrame
    per_image: pd.DataFrame
    probs: list[np.ndarray]


def evaluate_network(model: nn.Module, checkpoint: dict, role: str, condition: str, seed: int,
                     test_items: list[dict], val_items: Callable[[], list[dict]], evaluate_cfg: dict,
                     device: torch.device, cost: dict[str, float],
                     reference_probs: list[np.ndarray] | None = None) -> NetworkResult:
    """A segmentation network on the whole test images: pixel and object metrics, the scores
    under its validation calibration (stored in the checkpoint when it was saved; computed
    here, the same way, for older checkpoints, from ``val_items()``), ``cost``
    (emkt.costs), for a fine-tuned network whether it kept its start, and with
    ``reference_probs`` (another network's test probability maps: the feature-distilled
    student's teacher) how closely it reproduces that network."""
    ev, size = evaluate_cfg, checkpoint["input_size"]
    model = model.to(device)
    calibration = stored_calibration(checkpoint) or calibrate(model, val_items(), size, ev, device, seed)
    scores, per_image, probs = evaluate_segmenter(model, test_items, size, ev["overlap"], ev["batch_size"], device,
                                                  ev["threshold"], ev["calibration_bins"], ev["min_object_size"])
    kept = fine_tuning_scores(checkpoint)
    metrics = {**scores, **calibrated_scores(test_items, probs, calibration, ev["calibration_bins"]), **kept, **cost}
    if reference_probs is not None:
        metrics.update(agreement_with_reference(probs, reference_probs, [item.get("valid") for item in test_items],
                                                ev["threshold"]))
    validation = {key: calibration[key] for key in VALIDATION_KEYS}
    long = pd.concat([to_long(metrics, role, condition, seed),
                      to_long({**validation, **kept}, role, condition, seed, dataset="val")], ignore_index=True)
    per_image = per_image.assign(dataset="test", model=role, condition=condition, seed=seed)
    return NetworkResult(long, per_image, probs)


def network_probabilities(model: nn.Module, checkpoint: dict, items: list[dict], evaluate_cfg: dict,
                          device: torch.device) -> list[np.ndarray]:
    """A network's probability maps of whole images, as its evaluation computes them."""
    model = model.to(device)
    return [predict_probability(model, item["image"], checkpoint["input_size"], evaluate_cfg["overlap"],
                                evaluate_cfg["batch_size"], device) for item in items]


def evaluate_on_external(model: nn.Module, checkpoint: dict, role: str, condition: str, seed: int,
                         items: list[dict], dataset: str, evaluate_cfg: dict, device: torch.device) -> NetworkResult:
    """A network on an external labelled set: the test split's pixel and object metrics, for a
    labelled volume also those of objects across sections (emkt.evaluate.volume_instance_scores),
    and its scores under its stored validation calibration (none for a checkpoint without one).
    Returns the long rows, the per-image (per-section) table and the probability maps."""
    ev = evaluate_cfg
    scores, per_image, probs = evaluate_segmenter(model.to(device), items, checkpoint["input_size"], ev["overlap"],
                                                  ev["batch_size"], device, ev["threshold"], ev["calibration_bins"],
                                                  ev["min_object_size"])
    scores.update(volume_instance_scores(items, probs, ev["threshold"], ev["min_object_size"]))
    calibration = stored_calibration(checkpoint)
    if calibration is not None:  # chosen on the validation split when the network was saved
        scores.update(calibrated_scores(items, probs, calibration, ev["calibration_bins"]))
    return NetworkResult(to_long(scores, role, condition, seed, dataset=dataset),
                         per_image.assign(dataset=dataset, model=role, condition=condition, seed=seed), probs)


def proofread_on_external(teachers: dict[str, nn.Module], input_size: int, items: list[dict],
                          student_probs: dict[str, list[np.ndarray]], dataset: str, seed: int, evaluate_cfg: dict,
                          device: torch.device, pos_weight: float, example: tuple[str, str]
                          ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Each teacher (by stage) as a proofreader of each student on an external labelled set
    (emkt.proofread.evaluate_proofreading: the long rows and the review curves), and the
    arrays of the review figure: the evaluate.panel_images images that the teacher
    ``example[0]`` ranks worst for the student ``example[1]``."""
    ev = evaluate_cfg
    settings = {"overlap": ev["overlap"], "batch_size": ev["batch_size"], "device": device}
    long, curves = evaluate_proofreading(teachers, input_size, items, student_probs, dataset=dataset, seed=seed,
                                         pos_weight=pos_weight, threshold=ev["threshold"],
                                         min_size=ev["min_object_size"], **settings)
    stage, student = example
    examples = review_examples(teachers[stage], input_size, items, student_probs[student], ev["panel_images"],
                               threshold=ev["threshold"], **settings)
    return long, curves, examples


def evaluate_teacher(teacher: nn.Module, checkpoint: dict, stage: str, seed: int, items: list[dict],
                     student_probs: dict[str, list[np.ndarray]], device: torch.device, pos_weight: float,
                     threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A teacher's predicted vs the true per-tile loss (BCE with ``pos_weight``) of each
    student's test probability maps (``student_probs`` by condition); for an error-map
    teacher also the AUROC of its per-pixel error for the pixels each student got wrong.
    Returns the long rows (pooled over students, and per student) and the per-tile table."""
    teacher = teacher.to(device)
    size = checkpoint["input_size"]
    frames, aurocs = [], {}
    for condition, probs in student_probs.items():
        per_tile = teacher_predictions(teacher, items, probs, size, device, pos_weight)
        frames.append(per_tile.assign(teacher_stage=stage, seed=seed, student_condition=condition))
        if is_dense_teacher(teacher):
            aurocs[condition] = pixel_error_auroc(teacher, items, probs, size, device, threshold)
    per_tile = pd.concat(frames, ignore_index=True)
    # Pooled over all students, and per student: a teacher may rank the baseline student's
    # errors well and still be fooled by the expanded student it was minimised against.
    agreement = summarise_teacher(per_tile)
    for condition, tiles in per_tile.groupby("student_condition", sort=False):
        agreement.update({f"{k}@{condition}": v for k, v in summarise_teacher(tiles).items() if k != "pearson"})
    if aurocs:
        pooled = functools.reduce(PixelAurocMeter.merge, aurocs.values(), PixelAurocMeter())
        agreement["pixel_auroc"] = pooled.compute()
        agreement.update({f"pixel_auroc@{condition}": meter.compute() for condition, meter in aurocs.items()})
    long = pd.DataFrame([{"model": "teacher", "condition": stage, "seed": seed, "metric": k, "value": v}
                         for k, v in agreement.items()])
    return long, per_tile
