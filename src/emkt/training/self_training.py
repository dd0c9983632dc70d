"""Pseudo-label self-training (rule train_pseudo_labelled): a student learns from the labelled
images and from the pool's pseudo-labels (emkt.inference.write_pseudo_labels), where the
teacher network is confident enough.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..acceleration import Runtime
from ..augment import train_augmentation
from ..datasets import PoolCrops
from ..losses import per_image_loss
from ..resume import Checkpointing
from ..store import DataFiles, TileStore
from . import validation
from .loaders import cycle, labelled_data, make_loader
from .loop import CollapseGuard, KeptStudent, MeanTracker, Selection, fit, optimisation, progress
from .supervised import gt_bce


def pseudo_label_targets(pseudo: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (p >= 0.5) and the map of confident pixels (max(p, 1-p) >= threshold)."""
    return (pseudo >= 0.5).float(), (torch.maximum(pseudo, 1.0 - pseudo) >= threshold).float()


def self_train(cfg: dict, seed: int, files: DataFiles, pseudo_manifest: str | Path, student: nn.Module,
               history_path: str | Path, device: torch.device | str, resume: Checkpointing | None = None, *,
               from_trained: bool, threshold: float) -> KeptStudent:
    """Pseudo-label self-training: each step one labelled batch (BCE against the GT) and one
    pool batch (BCE against the teacher's hard labels where its confidence max(p, 1-p) is at
    least ``threshold``, pool_weight times). ``threshold`` is pseudo_label.threshold, or the one
    chosen on validation for 'auto' (emkt.calibration.pseudo_label_threshold).

    An epoch is ``expand.images_per_epoch`` pool images for ``expand.epochs`` epochs, so the
    student sees as many pool images as knowledge expansion does; the labelled crops repeat as needed.

    ``from_trained``: ``student`` is a trained network (pseudo_label.init: baseline). Then, as
    in expansion, it is validated first (epoch 0) and kept if no epoch beats it on validation
    IoU, so fine-tuning never returns a student worse on validation than its start; from
    scratch there is no epoch 0. Returns the kept student and its epoch.
    """
    stage_cfg = cfg["pseudo_label"]
    size = cfg["input_size"]
    if files.pool is None:
        raise ValueError("self-training needs the pool store (DataFiles.pool)")
    rt = Runtime.from_config(cfg, device)
    data = labelled_data(cfg, seed, files, rt)
    transform = train_augmentation(seed + 1, keys=("image", "pseudo")) if cfg["train"]["augment"] else None
    pool = PoolCrops(TileStore(files.pool), size, seed, transform=transform,
                     pseudo=TileStore(pseudo_manifest, "pseudo"))
    pool_loader = make_loader(pool, cfg, seed, rt, limit=cfg["expand"]["images_per_epoch"])
    train_student, update, scheduler = optimisation(rt, student, cfg["train"])
    weight = stage_cfg["pool_weight"]

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker, seen = MeanTracker(), 0
        labelled = cycle(data.train, epoch)
        for pool_batch in progress(pool_loader.epoch(epoch), "pseudo_labelled", epoch):
            batch, pool_batch = rt.batch(next(labelled)), rt.batch(pool_batch)
            target, confident = pseudo_label_targets(pool_batch["pseudo"], threshold)
            with rt.autocast():
                logits, pool_logits = train_student(batch["image"]), train_student(pool_batch["image"])
            bce = gt_bce(logits, batch, cfg)
            pool_bce = per_image_loss(pool_logits, target, cfg["train"]["pos_weight"], valid=confident)
            loss = bce.mean() + weight * pool_bce.mean()
            update(loss)
            tracker.add(loss=loss, bce=bce.mean(), pool_bce=pool_bce.mean(),
                        confident_fraction=confident.mean(), pseudo_foreground=target.mean())
            seen += len(pool_batch["image"])
        return {**tracker.means(), "pool_images": seen}

    selection = Selection("iou")
    best = fit(cfg["expand"]["epochs"], train_epoch,
               lambda: validation.student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student}, [scheduler], selection, history_path, "pseudo_labelled",
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group,
               validate_start=from_trained)
    student.load_state_dict(best["student"])
    return KeptStudent(student, selection.epoch)
