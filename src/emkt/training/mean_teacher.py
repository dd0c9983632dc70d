"""Mean-teacher consistency training on the unlabelled pool (condition mean_teacher, rule
train_mean_teacher): the field's standard semi-supervised rival of knowledge expansion.

Per step the student learns from a labelled batch (BCE against the ground truth) and from a
pool batch: an exponential moving average (EMA) of the student's weights predicts on the
weakly augmented crops, and the student, shown a strongly augmented view of the same crops
(emkt.augment.StrongAugmentation: flips and quarter turns, moved onto the target too, and
strong intensity changes), is trained towards that prediction where the EMA teacher is
confident (FixMatch-style weak-to-strong consistency with a confidence threshold; torch-em's
self_training trainers for EM do the same). Pool, pool images per epoch, epochs, starting
point and epoch-0 rule are those of expansion and pseudo-labelling (emkt.training.self_training).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..acceleration import Runtime
from ..augment import StrongAugmentation, apply_geometry
from ..losses import per_image_loss
from ..models import freeze
from ..resume import Checkpointing
from ..store import DataFiles
from .loop import KeptStudent
from .self_training import fit_on_pool, pool_crops, pseudo_label_targets


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """EMA weights: ``ema = decay * ema + (1 - decay) * model`` for every parameter; buffers
    (e.g. normalisation statistics) are copied from the model."""
    for ema_parameter, parameter in zip(ema.parameters(), model.parameters()):
        ema_parameter.lerp_(parameter.detach().to(ema_parameter.dtype), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def consistency_targets(teacher_prob: torch.Tensor, threshold: float,
                        target: str = "hard") -> tuple[torch.Tensor, torch.Tensor]:
    """The student's pool target and the map of pixels it is trained on: the EMA teacher's
    hard label (p >= 0.5) or its probability (``target`` 'soft'), kept where its confidence
    max(p, 1-p) reaches ``threshold``."""
    labels, confident = pseudo_label_targets(teacher_prob, threshold)
    return (labels if target == "hard" else teacher_prob), confident


def consistency_loss(train_student: nn.Module, teacher: nn.Module, weak: torch.Tensor,
                     augmentation: StrongAugmentation, settings: dict, pos_weight: float, rt: Runtime
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-image BCE of the student on the strong view against the EMA teacher's prediction
    on the weak view, moved by the same flips and rotations; unconfident pixels ignored."""
    with torch.no_grad(), rt.autocast():
        teacher_prob = torch.sigmoid(teacher(weak).float())
    strong, geometry = augmentation(weak)
    labels, confident = consistency_targets(apply_geometry(teacher_prob, geometry), settings["threshold"],
                                            settings["target"])
    with rt.autocast():
        logits = train_student(strong)
    return (per_image_loss(logits, labels, pos_weight, valid=confident),
            {"confident_fraction": confident.mean(), "target_foreground": (labels >= 0.5).float().mean()})


def mean_teacher_train(cfg: dict, seed: int, files: DataFiles, student: nn.Module, history_path: str | Path,
                       device: torch.device | str, resume: Checkpointing | None = None, *,
                       from_trained: bool) -> KeptStudent:
    """Mean-teacher training of ``student`` (config section 'mean_teacher'); the EMA teacher
    starts as a copy of it and follows it after every step. Returns the kept student (chosen
    on validation IoU, as every pool condition) and its epoch."""
    settings, pos_weight = cfg["mean_teacher"], cfg["train"]["pos_weight"]
    rt = Runtime.from_config(cfg, device)
    student.to(rt.device)
    teacher = freeze(copy.deepcopy(student))

    def pool_loss_of_epoch(epoch: int):
        # seeded by seed and epoch, so that a resumed job draws what the killed one would have
        augmentation = StrongAugmentation(settings["strong"], (seed, epoch))
        return lambda train_student, pool_batch: consistency_loss(
            train_student, teacher, pool_batch["image"], augmentation, settings, pos_weight, rt)

    return fit_on_pool(cfg, seed, files, student, pool_crops(cfg, seed, files), pool_loss_of_epoch,
                       settings["pool_weight"], history_path, rt, resume, stage="mean_teacher",
                       from_trained=from_trained, after_step=lambda: ema_update(teacher, student, settings["ema_decay"]),
                       followers={"ema_teacher": teacher})
