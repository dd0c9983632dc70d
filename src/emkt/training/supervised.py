"""Students trained on the ground truth alone (rules train_student_baseline and
train_segmenter): BCE over the labelled pixels, from scratch.

``gt_bce`` and ``new_student`` are the supervised part that the other student stages
(emkt.training.teacher, .expansion, .distillation, .self_training) add their own terms to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..acceleration import Runtime, Update
from ..losses import per_image_loss
from ..models import build_student
from ..resume import Checkpointing
from ..store import DataFiles
from . import validation
from .loaders import labelled_data
from .loop import CollapseGuard, MeanTracker, Selection, fit, optimisation, progress


def new_student(cfg: dict) -> nn.Module:
    return build_student(cfg["student"], cfg["input_size"])


def gt_bce(logits: torch.Tensor, batch: dict[str, torch.Tensor], cfg: dict) -> torch.Tensor:
    """Per-image BCE against the ground truth over labelled (not ignored) pixels, shape (B,)."""
    return per_image_loss(logits, batch["mask"], cfg["train"]["pos_weight"], valid=batch["valid"])


def segmenter_epoch(train_model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], update: Update,
                    runtime: Runtime, pos_weight: float = 1.0) -> dict[str, float]:
    """One pass of BCE training steps over ``batches`` ({"image", "mask", "valid"} on the
    host); returns the mean BCE. The step of the baseline student and the segmenters, and
    what benchmarks/training_step.py measures against a bare PyTorch loop."""
    tracker = MeanTracker()
    for batch in batches:
        batch = runtime.batch(batch)
        with runtime.autocast():
            logits = train_model(batch["image"])
        loss = per_image_loss(logits, batch["mask"], pos_weight, valid=batch["valid"]).mean()
        update(loss)
        tracker.add(bce=loss)
    return tracker.means()


def train_segmenter(cfg: dict, seed: int, files: DataFiles, model: nn.Module, epochs: int,
                    history_path: str | Path, device: torch.device | str, resume: Checkpointing | None = None,
                    stage: str = "student_baseline") -> nn.Module:
    """BCE only, from scratch: the baseline student and the convolutional segmenters."""
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt)
    train_model, update, scheduler = optimisation(rt, model, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        return segmenter_epoch(train_model, progress(data.train.epoch(epoch), stage, epoch), update, rt,
                               cfg["train"]["pos_weight"])

    best = fit(epochs, train_epoch, lambda: validation.student_validation(model, data.val_items, cfg, rt)[0],
               {"model": model}, [scheduler], Selection("iou"), history_path, stage,
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group)
    model.load_state_dict(best["model"])
    return model


def train_student_baseline(cfg: dict, seed: int, files: DataFiles, history_path: str | Path,
                           device: torch.device | str, resume: Checkpointing | None = None) -> nn.Module:
    """The ViT student with BCE only, from scratch."""
    return train_segmenter(cfg, seed, files, new_student(cfg), cfg["student_baseline"]["epochs"],
                           history_path, device, resume)
