"""The distillation students, both from scratch on the labelled images.

- ``distill_from_soft_labels`` (rule distill_ensemble): BCE against the ground truth plus
  the distance to the ensemble's soft labels (emkt.inference.soft_labels).
- ``feature_distill`` (rule feature_distill): a small ViT student that also matches a
  trained network's feature map (through ``DistillationHead``'s projection) and its
  probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..acceleration import Runtime
from ..losses import per_image_loss, per_image_mse
from ..models import FeatureProjection, FeatureTap, build_student, feature_channels, freeze
from ..resume import Checkpointing
from ..store import DataFiles, SoftLabelStore
from . import validation
from .loaders import labelled_data
from .loop import CollapseGuard, MeanTracker, Selection, fit, optimisation, progress
from .supervised import gt_bce, new_student


def distill_from_soft_labels(cfg: dict, seed: int, files: DataFiles, soft: SoftLabelStore,
                             history_path: str | Path, device: torch.device | str,
                             resume: Checkpointing | None = None) -> nn.Module:
    """A ViT student from scratch on hard and soft labels (ensemble distillation):
    BCE(GT) + alpha * MSE(sigmoid(z / T), ensemble mean at T), over labelled pixels."""
    stage_cfg = cfg["ensemble_distillation"]
    alpha, temperature = stage_cfg["alpha"], stage_cfg["temperature"]
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt, soft=soft)
    student = new_student(cfg)
    train_student, update, scheduler = optimisation(rt, student, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "ensemble_distilled", epoch):
            batch = rt.batch(batch)
            with rt.autocast():
                logits = train_student(batch["image"])
            bce = gt_bce(logits, batch, cfg)
            mse = per_image_mse(torch.sigmoid(logits.float() / temperature), batch["soft"], valid=batch["valid"])
            loss = (bce + alpha * mse).mean()
            update(loss)
            tracker.add(loss=loss, bce=bce.mean(), soft_mse=mse.mean())
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch,
               lambda: validation.student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student}, [scheduler], Selection("iou"), history_path, "ensemble_distilled",
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group)
    student.load_state_dict(best["student"])
    return student


class DistillationHead(nn.Module):
    """The student and its feature projection as one module, so that one data-parallel
    wrapper covers both: returns (student logits, student feature map projected to the
    teacher's channels and size)."""

    def __init__(self, student: nn.Module, tap: FeatureTap, projection: FeatureProjection) -> None:
        super().__init__()
        self.student, self.projection = student, projection
        self._tap = tap  # a hook holder, not a submodule

    def forward(self, image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.student(image)
        return logits, self.projection(self._tap.output, size)


def feature_distill(cfg: dict, seed: int, files: DataFiles, teacher: nn.Module, history_path: str | Path,
                    device: torch.device | str, resume: Checkpointing | None = None) -> nn.Module:
    """A small ViT student (feature_distillation.student) from scratch:
    BCE(GT) + feature_weight * MSE(projection(student map), teacher map)
    + response_weight * BCE(student logits, sigmoid(teacher logits)), over labelled pixels."""
    stage_cfg = cfg["feature_distillation"]
    size = cfg["input_size"]
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt)
    teacher = freeze(rt.place(teacher))
    student = build_student(stage_cfg["student"], size).to(rt.device)
    teacher_tap = FeatureTap(teacher, stage_cfg["teacher_layer"])
    student_tap = FeatureTap(student, stage_cfg["student_layer"])
    projection = FeatureProjection(feature_channels(student, student_tap, size),
                                   feature_channels(teacher, teacher_tap, size))
    head = DistillationHead(student, student_tap, projection)
    train_head, update, scheduler = optimisation(rt, head, cfg["train"])
    w_feature, w_response = stage_cfg["feature_weight"], stage_cfg["response_weight"]

    def train_epoch(epoch: int) -> dict[str, float]:
        head.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "feature_distilled", epoch):
            batch = rt.batch(batch)
            with rt.autocast():
                with torch.no_grad():
                    teacher_prob = torch.sigmoid(teacher(batch["image"]).float())
                teacher_map = teacher_tap.output
                logits, student_map = train_head(batch["image"], tuple(teacher_map.shape[-2:]))
            feature = F.mse_loss(student_map.float(), teacher_map.float())
            response = per_image_loss(logits, teacher_prob, valid=batch["valid"]).mean()
            bce = gt_bce(logits, batch, cfg).mean()
            loss = bce + w_feature * feature + w_response * response
            update(loss)
            tracker.add(loss=loss, bce=bce, feature_mse=feature, response_bce=response)
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch,
               lambda: validation.student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student, "projection": projection}, [scheduler], Selection("iou"), history_path,
               "feature_distilled", {"optimizer": update, "scheduler": scheduler}, resume,
               CollapseGuard.from_config(cfg), rt.group)
    teacher_tap.remove()
    student_tap.remove()
    student.load_state_dict(best["student"])
    return student
