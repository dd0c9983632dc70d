"""The teacher's stages (rules pretrain_teacher and joint_train).

- ``pretrain_teacher``: a teacher (the Critic, or the error-map UNet) learns to predict the
  student's loss of corrupted ground-truth masks, validated on a fixed corrupted set.
- ``joint_train``: a new student and the pretrained teacher together; the student minimises
  its BCE plus the teacher's predicted loss of its output, the teacher regresses the
  student's true loss (``teacher_step_loss``, also the alternating expansion's teacher step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..acceleration import Runtime
from ..augment import MaskCorruptor
from ..data import random_crop
from ..distributed import gather, shard
from ..evaluate import summarise_teacher, teacher_predictions
from ..losses import per_image_loss_of_prob, per_image_mse, pixel_loss_of_prob
from ..models import build_teacher, is_dense_teacher, teacher_arch
from ..resume import Checkpointing
from ..store import DataFiles
from . import validation
from .loaders import labelled_data
from .loop import CollapseGuard, MeanTracker, Selection, fit, frozen, optimisation, progress
from .supervised import gt_bce, new_student


def new_teacher(cfg: dict, kind: str = "critic") -> nn.Module:
    """An untrained teacher of a kind: 'critic' (section 'teacher') or 'error_map'."""
    return build_teacher(teacher_arch(cfg, kind), cfg["input_size"])


def teacher_regression(train_teacher: nn.Module, dense: bool, image: torch.Tensor, prob: torch.Tensor,
                       mask: torch.Tensor, valid: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """The teacher's training loss on one batch of (image, mask probability): the MSE of its
    predicted per-image loss, or, for an error-map teacher (``dense``), the MSE of its
    predicted per-pixel loss map over the labelled pixels. The target is the student's own
    loss (train.pos_weight as ``pos_weight``) of ``prob`` (losses.per_image_loss_of_prob)."""
    if dense:
        target = pixel_loss_of_prob(prob, mask, pos_weight)
        return per_image_mse(train_teacher(image, prob, dense=True), target, valid=valid).mean()
    return F.mse_loss(train_teacher(image, prob).float(), per_image_loss_of_prob(prob, mask, pos_weight, valid=valid))


def teacher_step_loss(train_teacher: nn.Module, dense: bool, image: torch.Tensor, prob: torch.Tensor,
                      mask: torch.Tensor, valid: torch.Tensor, corrupted: torch.Tensor | None,
                      pos_weight: float) -> torch.Tensor:
    """The loss of one teacher step of joint training (and of the alternating expansion): its
    regression on a student's detached predictions, plus, with ``corrupted`` masks (on the
    host), on those, so that it keeps the whole error range."""
    loss = teacher_regression(train_teacher, dense, image, prob.detach(), mask, valid, pos_weight)
    if corrupted is not None:
        loss = loss + teacher_regression(train_teacher, dense, image, corrupted.to(image.device, non_blocking=True),
                                         mask, valid, pos_weight)
    return loss


def corrupted_validation_set(val_items: list[dict], size: int, per_image: int, corruption: dict,
                             seed: int, pos_weight: float) -> dict[str, torch.Tensor]:
    """A fixed set of (image crop, corrupted mask, GT crop) and the teacher's target, the
    student's loss of the corrupted mask (``pos_weight``: train.pos_weight): the same every
    epoch and seed, so validation losses are comparable across epochs."""
    rng = np.random.default_rng([seed, 99])
    corruptor = MaskCorruptor(corruption, seed=seed + 99)
    crops: dict[str, list[torch.Tensor]] = {"image": [], "mask": [], "valid": []}
    for item in val_items:
        for _ in range(per_image):
            for key, crop in zip(crops, random_crop([item[key] for key in crops], size, rng)):
                crops[key].append(torch.from_numpy(np.ascontiguousarray(crop)).float())
    image_t, mask_t, valid_t = (torch.stack(crops[key])[:, None] for key in crops)
    corrupted = corruptor.corrupt_batch(mask_t)
    return {"image": image_t, "mask": mask_t, "corrupted": corrupted,
            "target": per_image_loss_of_prob(corrupted, mask_t, pos_weight, valid=valid_t)}


@torch.no_grad()
def teacher_validation(teacher: nn.Module, val_set: dict[str, torch.Tensor], batch_size: int,
                       runtime: Runtime) -> dict[str, float]:
    """MSE, MAE and Spearman of the teacher on the fixed corrupted set; each rank predicts
    its share (every world-th crop) and the predictions are gathered."""
    teacher.eval()
    group, device = runtime.group, runtime.device
    mine = {key: value[group.rank::group.world] for key, value in val_set.items()}
    predicted = torch.cat([
        teacher(mine["image"][i:i + batch_size].to(device), mine["corrupted"][i:i + batch_size].to(device)).cpu()
        for i in range(0, len(mine["image"]), batch_size)
    ] or [torch.zeros(0)])
    teacher.train()
    pairs = gather((predicted, mine["target"]), group)
    predicted, target = (torch.cat([pair[k] for pair in pairs]) for k in (0, 1))
    agreement = summarise_teacher(pd.DataFrame({"predicted": predicted.numpy(), "true": target.numpy()}))
    return {"mse": float(F.mse_loss(predicted, target)), "mae": agreement["mae"],
            "spearman": agreement["spearman"]}


def pretrain_teacher(cfg: dict, seed: int, files: DataFiles, history_path: str | Path,
                     device: torch.device | str, resume: Checkpointing | None = None,
                     kind: str = "critic") -> nn.Module:
    """Teach a teacher of ``kind`` to predict the student's loss of a corrupted GT mask (BCE with
    train.pos_weight, losses.per_image_loss_of_prob) from (image, corrupted GT): per image
    (Critic) or the per-pixel map (error map)."""
    stage_cfg = cfg["teacher_pretrain"]
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt)
    teacher = new_teacher(cfg, kind)
    dense = is_dense_teacher(teacher)
    train_teacher, update, scheduler = optimisation(rt, teacher, cfg["train"])
    corruptor = MaskCorruptor(stage_cfg["corruption"], seed=seed)
    pos_weight = cfg["train"]["pos_weight"]
    val_set = corrupted_validation_set(data.val_items, cfg["input_size"], stage_cfg["val_corruptions_per_image"],
                                       stage_cfg["corruption"], seed, pos_weight)

    def train_epoch(epoch: int) -> dict[str, float]:
        teacher.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "pretrain_teacher", epoch):
            corrupted = corruptor.corrupt_batch(batch["mask"])
            batch = rt.batch({**batch, "corrupted": corrupted})
            with rt.autocast():
                loss = teacher_regression(train_teacher, dense, batch["image"], batch["corrupted"], batch["mask"],
                                          batch["valid"], pos_weight)
            update(loss)
            tracker.add(mse=loss, target_mean=per_image_loss_of_prob(batch["corrupted"], batch["mask"], pos_weight,
                                                                     valid=batch["valid"]).mean())
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch,
               lambda: teacher_validation(teacher, val_set, cfg["train"]["batch_size"], rt),
               {"teacher": teacher}, [scheduler], Selection("mse", "min"), history_path, "pretrain_teacher",
               {"optimizer": update, "scheduler": scheduler, "corruptor": corruptor}, resume, group=rt.group)
    teacher.load_state_dict(best["teacher"])
    return teacher


def joint_train(cfg: dict, seed: int, files: DataFiles, teacher: nn.Module, history_path: str | Path,
                device: torch.device | str, resume: Checkpointing | None = None) -> tuple[nn.Module, nn.Module]:
    """Student and teacher together; returns (teacher, student) of the best validation epoch.

    Per step: the student minimises its per-image BCE plus ``teacher_loss_weight`` times the
    (frozen) teacher's predicted loss of its own output; then the teacher regresses the
    student's true per-image loss (the same BCE, train.pos_weight included), and that of a
    batch of corrupted GT masks so it keeps the whole error range.
    """
    stage_cfg = cfg["joint"]
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt)
    student = new_student(cfg)
    train_student, update_s, scheduler_s = optimisation(rt, student, cfg["train"])
    train_teacher, update_t, scheduler_t = optimisation(rt, teacher, cfg["train"])
    schedulers = [scheduler_s, scheduler_t]
    corruptor = MaskCorruptor(cfg["teacher_pretrain"]["corruption"], seed=seed + 1)
    weight = stage_cfg["teacher_loss_weight"]
    dense = is_dense_teacher(teacher)

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        teacher.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "joint", epoch):
            corrupted = corruptor.corrupt_batch(batch["mask"]) if stage_cfg["corrupted_batch"] else None
            batch = rt.batch(batch)
            image, mask = batch["image"], batch["mask"]
            with rt.autocast():
                logits = train_student(image)
                prob = torch.sigmoid(logits)
                # the teacher itself, not its DDP wrapper: frozen, it takes no part in the gradient sync
                with frozen(teacher):
                    predicted = teacher(image, prob)
            bce = gt_bce(logits, batch, cfg)
            loss_s = (bce + weight * predicted.float()).mean()
            update_s(loss_s)

            with rt.autocast():
                loss_t = teacher_step_loss(train_teacher, dense, image, prob, mask, batch["valid"], corrupted,
                                           cfg["train"]["pos_weight"])
            update_t(loss_t)
            tracker.add(student_loss=loss_s, bce=bce.mean(),
                        teacher_predicted=predicted.float().mean(), teacher_mse=loss_t)
        return tracker.means()

    def validate() -> dict[str, float]:
        values, probs = validation.student_validation(student, data.val_items, cfg, rt)
        mine = teacher_predictions(teacher, shard(data.val_items, rt.group), probs, cfg["input_size"], rt.device,
                                   cfg["train"]["pos_weight"])
        agreement = summarise_teacher(pd.concat(gather(mine, rt.group), ignore_index=True))
        teacher.train()
        return {**values, "teacher_mae": agreement["mae"], "teacher_spearman": agreement["spearman"]}

    best = fit(stage_cfg["epochs"], train_epoch, validate, {"student": student, "teacher": teacher},
               schedulers, Selection("iou"), history_path, "joint",
               {"optimizer_student": update_s, "optimizer_teacher": update_t, "scheduler_student": schedulers[0],
                "scheduler_teacher": schedulers[1], "corruptor": corruptor}, resume, CollapseGuard.from_config(cfg),
               rt.group)
    student.load_state_dict(best["student"])
    teacher.load_state_dict(best["teacher"])
    return teacher, student
