"""Self-training on the unlabelled pool: the loop that both pool conditions share
(``fit_on_pool``) and pseudo-label self-training (rule train_pseudo_labelled), where a student
learns from the labelled images and from the pool's pseudo-labels
(emkt.inference.write_pseudo_labels) where the teacher network is confident enough. The
mean-teacher condition (emkt.training.mean_teacher) runs the same loop with targets from an
EMA copy of the student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

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

# The pool term of one step: (train module, pool batch on the device) -> (per-image loss (B,),
# values to log); made afresh each epoch from the epoch number (its random draws resume with it).
PoolLoss = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def pseudo_label_targets(pseudo: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (p >= 0.5) and the map of confident pixels (max(p, 1-p) >= threshold)."""
    return (pseudo >= 0.5).float(), (torch.maximum(pseudo, 1.0 - pseudo) >= threshold).float()


def pool_crops(cfg: dict, seed: int, files: DataFiles, pseudo_manifest: str | Path | None = None) -> PoolCrops:
    """The pool's training crops, weakly augmented (flips, quarter turns, mild intensity) when
    train.augment; with the pseudo-labels of the same crops when a manifest is given."""
    if files.pool is None:
        raise ValueError("training on the pool needs the pool store (DataFiles.pool)")
    keys = ("image",) if pseudo_manifest is None else ("image", "pseudo")
    transform = train_augmentation(seed + 1, keys=keys) if cfg["train"]["augment"] else None
    return PoolCrops(TileStore(files.pool), cfg["input_size"], seed, transform=transform,
                     pseudo=None if pseudo_manifest is None else TileStore(pseudo_manifest, "pseudo"))


def fit_on_pool(cfg: dict, seed: int, files: DataFiles, student: nn.Module, pool: PoolCrops,
                pool_loss_of_epoch: Callable[[int], PoolLoss], pool_weight: float, history_path: str | Path,
                rt: Runtime, resume: Checkpointing | None, *, stage: str, from_trained: bool,
                after_step: Callable[[], None] | None = None, followers: dict[str, nn.Module] | None = None
                ) -> KeptStudent:
    """Train ``student`` with one labelled batch (BCE against the GT) and one pool batch (the
    pool term, ``pool_weight`` times) per step, for ``expand.epochs`` epochs of
    ``expand.images_per_epoch`` pool images: as many pool images as knowledge expansion sees.

    ``from_trained``: ``student`` is a trained network; then, as in expansion, it is validated
    first (epoch 0) and kept if no epoch beats it on validation IoU, so fine-tuning never
    returns a student worse on validation than its start; from scratch there is no epoch 0.
    ``after_step`` runs after each optimiser step; ``followers`` are further networks whose
    state a resumed job must restore (the mean teacher's EMA copy). Returns the kept student
    and its epoch.
    """
    data = labelled_data(cfg, seed, files, rt)
    pool_loader = make_loader(pool, cfg, seed, rt, limit=cfg["expand"]["images_per_epoch"])
    train_student, update, scheduler = optimisation(rt, student, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        pool_loss = pool_loss_of_epoch(epoch)
        tracker, seen = MeanTracker(), 0
        labelled = cycle(data.train, epoch)
        for pool_batch in progress(pool_loader.epoch(epoch), stage, epoch):
            batch, pool_batch = rt.batch(next(labelled)), rt.batch(pool_batch)
            with rt.autocast():
                logits = train_student(batch["image"])
            bce = gt_bce(logits, batch, cfg)
            pool_term, values = pool_loss(train_student, pool_batch)
            loss = bce.mean() + pool_weight * pool_term.mean()
            update(loss)
            if after_step is not None:
                after_step()
            tracker.add(loss=loss, bce=bce.mean(), pool_bce=pool_term.mean(), **values)
            seen += len(pool_batch["image"])
        return {**tracker.means(), "pool_images": seen}

    selection = Selection("iou")
    best = fit(cfg["expand"]["epochs"], train_epoch,
               lambda: validation.student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student, **(followers or {})}, [scheduler], selection, history_path, stage,
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group,
               validate_start=from_trained)
    student.load_state_dict(best["student"])
    return KeptStudent(student, selection.epoch)


def self_train(cfg: dict, seed: int, files: DataFiles, pseudo_manifest: str | Path, student: nn.Module,
               history_path: str | Path, device: torch.device | str, resume: Checkpointing | None = None, *,
               from_trained: bool, threshold: float) -> KeptStudent:
    """Pseudo-label self-training (``fit_on_pool``): the pool term is the BCE against the
    teacher's hard labels where its confidence max(p, 1-p) is at least ``threshold``.
    ``threshold`` is pseudo_label.threshold, or the one chosen on validation for 'auto'
    (emkt.calibration.pseudo_label_threshold)."""
    pos_weight = cfg["train"]["pos_weight"]
    rt = Runtime.from_config(cfg, device)

    def pool_loss(train_student: nn.Module, pool_batch: dict[str, torch.Tensor]):
        target, confident = pseudo_label_targets(pool_batch["pseudo"], threshold)
        with rt.autocast():
            pool_logits = train_student(pool_batch["image"])
        return (per_image_loss(pool_logits, target, pos_weight, valid=confident),
                {"confident_fraction": confident.mean(), "pseudo_foreground": target.mean()})

    pool = pool_crops(cfg, seed, files, pseudo_manifest)
    return fit_on_pool(cfg, seed, files, student, pool, lambda epoch: pool_loss, cfg["pseudo_label"]["pool_weight"],
                       history_path, rt, resume, stage="pseudo_labelled", from_trained=from_trained)
