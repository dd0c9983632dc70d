"""Knowledge expansion (rule expand_student): the joint student trained on the unlabelled
pool to minimise its teachers' predicted loss, in one of the variants of config ``expand``
(faithful, anchored, alternating, committee).

``Committee`` combines several teachers' predictions; ``ExpansionGuard`` ends a stage in
which the student fools its teacher rather than learns from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..acceleration import Runtime
from ..augment import MaskCorruptor, train_augmentation
from ..data import read_split
from ..datasets import PoolCrops
from ..losses import per_image_kl_with_logits, per_image_loss
from ..models import freeze, is_dense_teacher
from ..resume import Checkpointing
from ..store import DataFiles, TileStore
from . import validation
from .loaders import cycle, labelled_data, make_loader
from .loop import CollapseGuard, KeptStudent, MeanTracker, Selection, fit, frozen, optimisation, progress
from .supervised import gt_bce
from .teacher import teacher_step_loss


def labelled_foreground_fraction(files: DataFiles, split: str = "train") -> float:
    """Foreground fraction of a split's labelled pixels (from the index's per-image fractions)."""
    table = read_split(files.split, split)
    pixels = table["height"] * table["width"]
    return float((table["foreground_fraction"] * pixels).sum() / pixels.sum())


@dataclass
class ExpansionGuard:
    """Ends expansion when the student is fooling the teacher rather than learning from it
    (config keys expand.stop_fraction_ratio, expand.stop_patience):

    - its foreground fraction on the pool leaves [f / ratio, f * ratio] around the labelled
      training fraction f (the collapse to near-empty masks, or to all-foreground);
    - or, for ``patience`` epochs in a row, the teacher's predicted loss on the pool fell while
      the validation BCE rose.
    """

    labelled_fraction: float
    ratio: float | None
    patience: int

    @classmethod
    def from_config(cls, cfg: dict, files: DataFiles) -> ExpansionGuard:
        stage = cfg["expand"]
        return cls(labelled_foreground_fraction(files), stage["stop_fraction_ratio"], stage["stop_patience"])

    def __call__(self, rows: list[dict]) -> str | None:
        trained = [row for row in rows if row["epoch"] > 0]
        if not trained:
            return None
        fraction = trained[-1]["train_predicted_fraction"]
        low, high = (self.labelled_fraction / self.ratio, self.labelled_fraction * self.ratio) if self.ratio else (0, 1)
        if not low <= fraction <= high:
            return (f"the student's foreground fraction on the pool, {fraction:.4f}, left [{low:.4f}, {high:.4f}] "
                    f"around the labelled training fraction {self.labelled_fraction:.4f} "
                    "(config key expand.stop_fraction_ratio): collapse")
        if self.patience and len(rows) > self.patience and all(
                now["train_teacher_predicted"] < before.get("train_teacher_predicted", np.inf)
                and now["val_bce"] > before["val_bce"] for before, now in zip(rows[-self.patience - 1:-1],
                                                                             rows[-self.patience:])):
            return (f"for {self.patience} epochs the teacher's predicted loss fell while the validation BCE rose "
                    "(config key expand.stop_patience): the student is fooling the teacher")
        return None


class Committee(nn.Module):
    """Teachers whose predicted per-image losses combine by mean or max; one teacher is a
    committee of one. The student's steps see it frozen, so it is not wrapped for data
    parallelism (expand_student trains the alternating variant's one teacher through its own
    wrapper)."""

    def __init__(self, teachers: list[nn.Module], reduce: str = "mean") -> None:
        super().__init__()
        self.teachers, self.reduce = nn.ModuleList(teachers), reduce

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        predicted = torch.stack([teacher(image, prob).float() for teacher in self.teachers])
        return predicted.max(dim=0).values if self.reduce == "max" else predicted.mean(dim=0)


def consistency_loss(logits: torch.Tensor, reference_prob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image distance of the student's pool predictions from the frozen joint student's
    probabilities (config expand.consistency): BCE, or Bernoulli KL (0 at agreement)."""
    if kind == "kl":
        return per_image_kl_with_logits(logits, reference_prob)
    return per_image_loss(logits, reference_prob)


def expand_student(cfg: dict, seed: int, files: DataFiles, student: nn.Module, teachers: list[nn.Module],
                   history_path: str | Path, device: torch.device | str, resume: Checkpointing | None = None,
                   variant: str = "faithful") -> KeptStudent:
    """Knowledge expansion: train the joint student on unlabelled pool images to minimise the
    predicted loss of ``teachers`` (config expand; docs/pipeline.md "Expansion variants").

    - faithful (the paper): pool batches only, one frozen teacher.
    - every other variant is anchored: each step adds expand.labelled_weight x the BCE of a
      labelled batch, and expand.consistency_weight x the distance of the student's pool
      predictions from the frozen starting student's.
    - alternating: the (one) teacher is refreshed every expand.refresh_every student steps on
      the current student's predictions of a labelled batch, as in joint training.
    - committee: several teachers' predictions, combined by expand.committee.reduce.

    Validation IoU picks the kept epoch, the starting student (epoch 0) included, and
    ExpansionGuard ends a stage that collapses. Returns the kept student and its epoch.
    """
    stage_cfg = cfg["expand"]
    size = cfg["input_size"]
    anchored, alternating = variant != "faithful", variant == "alternating"
    if alternating and len(teachers) != 1:
        raise ValueError(f"the alternating variant refreshes one teacher, got {len(teachers)}")
    rt = Runtime.from_config(cfg, device)
    teachers = [rt.place(teacher) for teacher in teachers]
    committee = Committee(teachers, stage_cfg["committee"]["reduce"])
    if not alternating:  # the alternating variant's teacher trains between student steps
        freeze(committee)
    transform = train_augmentation(seed, keys=("image",)) if cfg["train"]["augment"] else None
    if files.pool is None:
        raise ValueError("expansion needs the pool store (DataFiles.pool)")
    pool = PoolCrops(TileStore(files.pool), size, seed, transform=transform)
    loader = make_loader(pool, cfg, seed, rt, limit=stage_cfg["images_per_epoch"])
    labelled = labelled_data(cfg, seed + 1, files, rt) if anchored else None
    val_items = labelled.val_items if labelled is not None else files.split_items("val")
    w_labelled, w_consistency = stage_cfg["labelled_weight"], stage_cfg["consistency_weight"]
    reference = freeze(copy.deepcopy(student)) if anchored and w_consistency > 0 else None
    # expansion fine-tunes a trained student: a smaller step than training from scratch
    fine_tuning = {**cfg["train"], "lr": cfg["train"]["lr"] * stage_cfg["lr_scale"]}
    train_student, update, scheduler = optimisation(rt, student, fine_tuning)
    schedulers, stateful = [scheduler], {"optimizer": update, "scheduler": scheduler}
    if alternating:
        teacher = teachers[0].requires_grad_(True).train()
        dense = is_dense_teacher(teacher)
        train_teacher, update_t, scheduler_t = optimisation(rt, teacher, fine_tuning)
        corruptor = MaskCorruptor(cfg["teacher_pretrain"]["corruption"], seed=seed + 2)
        schedulers.append(scheduler_t)
        stateful.update(teacher=teacher, optimizer_teacher=update_t, scheduler_teacher=scheduler_t,
                        corruptor=corruptor)

    def refresh_teacher(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One teacher step on the current student's predictions of a labelled batch."""
        corrupted = corruptor.corrupt_batch(batch["mask"]) if cfg["joint"]["corrupted_batch"] else None
        batch = rt.batch(batch)
        with torch.no_grad(), rt.autocast():
            prob = torch.sigmoid(student(batch["image"]).float())
        with rt.autocast():
            loss = teacher_step_loss(train_teacher, dense, batch["image"], prob, batch["mask"], batch["valid"],
                                     corrupted, cfg["train"]["pos_weight"])
        update_t(loss)
        return loss

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker, seen = MeanTracker(), 0
        labelled_batches = cycle(labelled.train, epoch) if labelled is not None else None
        for step, pool_batch in enumerate(progress(loader.epoch(epoch), f"expand_{variant}", epoch)):
            image = rt.batch(pool_batch)["image"]
            batch = rt.batch(next(labelled_batches)) if labelled_batches is not None else None
            # one forward pass over pool and labelled images (one DDP forward per backward)
            inputs = image if batch is None else torch.cat([image, batch["image"]])
            with rt.autocast():
                logits_all = train_student(inputs)
                logits = logits_all[:len(image)]
                prob = torch.sigmoid(logits)
                with frozen(committee):  # gradients reach the student through the teachers' input
                    predicted = committee(image, prob)
            loss = predicted.mean()
            values = {"teacher_predicted": loss.detach(), "predicted_fraction": (prob > 0.5).float().mean()}
            if batch is not None:
                bce = gt_bce(logits_all[len(image):], batch, cfg).mean()
                loss = loss + w_labelled * bce
                values["bce"] = bce.detach()
            if reference is not None:
                with torch.no_grad(), rt.autocast():
                    reference_prob = torch.sigmoid(reference(image).float())
                consistency = consistency_loss(logits, reference_prob, stage_cfg["consistency"]).mean()
                loss = loss + w_consistency * consistency
                values["consistency"] = consistency.detach()
            update(loss)
            if alternating and (step + 1) % stage_cfg["refresh_every"] == 0:
                values["teacher_mse"] = refresh_teacher(next(labelled_batches)).detach()
            tracker.add(loss=loss.detach(), **values)
            seen += len(image)
        return {**tracker.means(), "pool_images": seen}

    selection = Selection("iou")
    best = fit(stage_cfg["epochs"], train_epoch, lambda: validation.student_validation(student, val_items, cfg, rt)[0],
               {"student": student}, schedulers, selection, history_path, f"expand_{variant}",
               stateful, resume, CollapseGuard.from_config(cfg), rt.group,
               validate_start=True, early_stop=ExpansionGuard.from_config(cfg, files))
    student.load_state_dict(best["student"])
    return KeptStudent(student, selection.epoch)
