"""The four training stages: teacher pretraining, student baseline, joint training, expansion.

Each stage is a per-epoch loop with the same shape (``fit``): train one epoch, validate,
log a row to the per-epoch CSV, keep the best epoch's weights. Stage functions only say
what one step and one validation are.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from .augment import MaskCorruptor, train_augmentation
from .data import load_whole_images, random_crop, read_split
from .datasets import LabelledCrops, PoolCrops
from .evaluate import evaluate_segmenter, summarise_teacher, teacher_predictions
from .losses import per_image_bce, per_image_bce_with_logits, per_image_mse
from .models import FeatureProjection, FeatureTap, build_student, build_teacher, feature_channels, freeze
from .resume import Checkpointing
from .store import LabelledStore, SoftLabelStore, TileStore
from .files import atomic_path

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- building blocks

class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch), optionally a subset of ``limit`` indices.

    Per-epoch seeding makes the order independent of how many epochs ran before in this
    process, which a resumed job needs.
    """

    def __init__(self, size: int, seed: int, limit: int | None = None) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.limit = size if limit is None else min(limit, size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.size)
        # A generator, not a list: a Python int per pool image would be ~60 MB at 1.6 M.
        return (int(i) for i in order[: self.limit])

    def __len__(self) -> int:
        return self.limit


@dataclass
class Loader:
    """A DataLoader whose dataset and sampler are told the epoch before each pass."""

    dataset: Dataset
    sampler: EpochSampler
    loader: DataLoader

    def epoch(self, epoch: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        return self.loader


def make_loader(dataset: Dataset, cfg: dict, seed: int, device: torch.device,
                limit: int | None = None) -> Loader:
    sampler = EpochSampler(len(dataset), seed, limit)
    workers = cfg["loader"]["num_workers"]
    batch_size = cfg["train"]["batch_size"]
    # A last batch of one image breaks BatchNorm (the teacher's); drop the incomplete
    # last batch whenever there is at least one full batch (the sampler reshuffles each epoch).
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=len(sampler) >= batch_size,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    return Loader(dataset, sampler, loader)


def make_optimizer(parameters, train_cfg: dict) -> torch.optim.Optimizer:
    """The one optimiser every model and stage uses (config section 'train')."""
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=wd)
    return torch.optim.SGD(parameters, lr=lr, weight_decay=wd, momentum=train_cfg["momentum"])


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: dict) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train_cfg["lr_step_epochs"],
                                           gamma=train_cfg["lr_gamma"])


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily eval mode without parameter gradients (gradients still reach the inputs)."""
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    freeze(module)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)
        module.train(was_training)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value):
        raise FloatingPointError(f"{what} became {value.item()}; stopping instead of saving a useless model")


class MeanTracker:
    """Running means of named scalars over an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


@dataclass
class Selection:
    """Which validation value picks the kept epoch."""

    key: str
    mode: str = "max"
    best: float = field(default=float("nan"))
    epoch: int = 0

    def improves(self, value: float) -> bool:
        if np.isnan(self.best):
            return not np.isnan(value)
        return value > self.best if self.mode == "max" else value < self.best


class TrainingCollapsed(RuntimeError):
    """Validation Dice stayed at ~0 for too many epochs: the model predicts nothing useful."""


@dataclass
class CollapseGuard:
    """Stop a student stage whose validation Dice stays at or below ``min_dice`` for
    ``patience`` consecutive epochs (config keys train.collapse_patience, train.collapse_dice)."""

    patience: int
    min_dice: float

    @classmethod
    def from_config(cls, cfg: dict) -> CollapseGuard | None:
        patience = cfg["train"]["collapse_patience"]
        return cls(patience, cfg["train"]["collapse_dice"]) if patience else None

    def check(self, rows: list[dict], stage: str) -> None:
        dice = [row["val_dice"] for row in rows if "val_dice" in row]
        stuck = 0
        for value in reversed(dice):
            if not value <= self.min_dice:
                break
            stuck += 1
        if stuck >= self.patience:
            raise TrainingCollapsed(
                f"{stage}: validation Dice <= {self.min_dice:g} for {stuck} consecutive epochs "
                f"(config keys train.collapse_patience = {self.patience}, train.collapse_dice); the model "
                "predicts (almost) no foreground. Stopping without a checkpoint; lower the learning rate, "
                "raise train.pos_weight, or check the masks.")


def fit(epochs: int, train_epoch: Callable[[int], dict[str, float]], validate: Callable[[], dict[str, float]],
        models: dict[str, nn.Module], schedulers: list, selection: Selection, history_path: str | Path,
        stage: str, stateful: dict[str, Any] | None = None, resume: Checkpointing | None = None,
        guard: CollapseGuard | None = None) -> dict[str, dict]:
    """Run ``epochs`` epochs; return the state dicts of ``models`` at the best epoch.

    After every epoch a row (train means, validation values, learning rate, seconds) is
    appended to the per-epoch CSV, rewritten atomically so it is readable at any time, and,
    with ``resume``, the whole training state is saved so a killed job continues from there.
    ``stateful`` names what the state must hold besides the models (optimisers, schedulers,
    the corruptor). ``guard`` stops a collapsing run with TrainingCollapsed.
    """
    stateful = {**{f"model:{k}": m for k, m in models.items()}, **(stateful or {})}
    rows: list[dict] = []
    best_states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    first = 1
    if resume is not None and (state := resume.load(stateful)) is not None:
        rows, best_states, first = state["rows"], state["best_states"], state["epoch"] + 1
        selection.best, selection.epoch = state["selection"]
    for epoch in range(first, epochs + 1):
        start = time.perf_counter()
        lr = schedulers[0].get_last_lr()[0] if schedulers else float("nan")
        train_values = train_epoch(epoch)
        for scheduler in schedulers:
            scheduler.step()
        val_values = validate()
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_values.items()},
               **{f"val_{k}": v for k, v in val_values.items()}, "lr": lr,
               "seconds": time.perf_counter() - start}
        rows.append(row)
        with atomic_path(history_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        value = val_values[selection.key]
        if selection.improves(value):
            selection.best, selection.epoch = value, epoch
            best_states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
        log.info("%s epoch %d/%d: %s", stage, epoch, epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if resume is not None:
            resume.save(epoch, rows, (selection.best, selection.epoch), best_states, stateful)
        if guard is not None:
            guard.check(rows, stage)
    if first > epochs:  # resumed after the last epoch: the history file may have been removed
        with atomic_path(history_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    log.info("%s: kept epoch %d (val %s = %.4g)", stage, selection.epoch, selection.key, selection.best)
    return best_states


def progress(iterable, stage: str, epoch: int):
    """tqdm over the batches of one epoch, into the job's log (stderr)."""
    return tqdm(iterable, desc=f"{stage} epoch {epoch}", mininterval=10, leave=False)


# ---------------------------------------------------------------- shared pieces of the stages

@dataclass(frozen=True)
class DataFiles:
    """What the stages read: the split CSV (the single source of truth for which image is
    in which split) and the packed stores' manifests (emkt.store)."""

    split: str | Path
    labelled: str | Path
    pool: str | Path | None = None
    ignore_label: int | None = None

    def split_items(self, split: str) -> list[dict]:
        """Whole normalised images, masks and valid maps of one split, for validation or testing."""
        return load_whole_images(read_split(self.split, split), LabelledStore(self.labelled), self.ignore_label)


@dataclass
class StageData:
    """What every stage reads: training crops and whole validation images."""

    train: Loader
    val_items: list[dict]


def labelled_data(cfg: dict, seed: int, files: DataFiles, device: torch.device,
                  soft: SoftLabelStore | None = None) -> StageData:
    """Training crops {"image", "mask", "valid"} (and "soft" with soft labels) and whole validation images."""
    keys = ("image", "mask", "valid", "soft") if soft is not None else ("image", "mask", "valid")
    transform = train_augmentation(seed, keys=keys) if cfg["train"]["augment"] else None
    crops = LabelledCrops(LabelledStore(files.labelled), read_split(files.split, "train")["id"], cfg["input_size"],
                          seed, crops_per_image=cfg["loader"]["crops_per_image"], transform=transform,
                          ignore_label=files.ignore_label, soft=soft)
    return StageData(make_loader(crops, cfg, seed, device), files.split_items("val"))


def cycle(loader: Loader, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``loader`` without end: passes (epoch, 0), (epoch, 1), ... each reshuffled,
    for a stage whose epoch is set by another loader."""
    for repeat in itertools.count():
        yield from loader.epoch(epoch * 100_000 + repeat)


def student_validation(student: nn.Module, val_items: list[dict], cfg: dict,
                       device: torch.device) -> tuple[dict[str, float], list[np.ndarray]]:
    """Validation IoU/Dice on whole validation images, plus the probability maps."""
    ev = cfg["evaluate"]
    metrics, _, probs = evaluate_segmenter(student, val_items, cfg["input_size"], ev["overlap"],
                                           ev["batch_size"], device, ev["threshold"], ev["calibration_bins"])
    student.train()
    return {"iou": metrics["iou"], "dice": metrics["dice"]}, probs


def new_student(cfg: dict, device: torch.device) -> nn.Module:
    return build_student(cfg["student"], cfg["input_size"]).to(device)


def new_teacher(cfg: dict, device: torch.device) -> nn.Module:
    return build_teacher(cfg["teacher"], cfg["input_size"]).to(device)


# ---------------------------------------------------------------- stage 1: teacher pretraining

def corrupted_validation_set(val_items: list[dict], size: int, per_image: int, corruption: dict,
                             seed: int) -> dict[str, torch.Tensor]:
    """A fixed set of (image crop, corrupted mask, GT crop): the same every epoch and seed,
    so validation losses are comparable across epochs."""
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
            "target": per_image_bce(corrupted, mask_t, valid=valid_t)}


@torch.no_grad()
def teacher_validation(teacher: nn.Module, val_set: dict[str, torch.Tensor], batch_size: int,
                       device: torch.device) -> dict[str, float]:
    teacher.eval()
    predicted = torch.cat([
        teacher(val_set["image"][i:i + batch_size].to(device), val_set["corrupted"][i:i + batch_size].to(device)).cpu()
        for i in range(0, len(val_set["image"]), batch_size)
    ])
    teacher.train()
    agreement = summarise_teacher(pd.DataFrame({"predicted": predicted.numpy(), "true": val_set["target"].numpy()}))
    return {"mse": float(F.mse_loss(predicted, val_set["target"])), "mae": agreement["mae"],
            "spearman": agreement["spearman"]}


def pretrain_teacher(cfg: dict, seed: int, files: DataFiles, history_path: str | Path,
                     device: torch.device, resume: Checkpointing | None = None) -> nn.Module:
    """Teach the teacher to predict BCE(corrupted GT, GT) from (image, corrupted GT)."""
    stage_cfg = cfg["teacher_pretrain"]
    data = labelled_data(cfg, seed, files, device)
    teacher = new_teacher(cfg, device)
    optimizer = make_optimizer(teacher.parameters(), cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])
    corruptor = MaskCorruptor(stage_cfg["corruption"], seed=seed)
    val_set = corrupted_validation_set(data.val_items, cfg["input_size"], stage_cfg["val_corruptions_per_image"],
                                       stage_cfg["corruption"], seed)

    def train_epoch(epoch: int) -> dict[str, float]:
        teacher.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "pretrain_teacher", epoch):
            corrupted = corruptor.corrupt_batch(batch["mask"])
            batch = to_device({**batch, "corrupted": corrupted}, device)
            target = per_image_bce(batch["corrupted"], batch["mask"], valid=batch["valid"])
            loss = F.mse_loss(teacher(batch["image"], batch["corrupted"]), target)
            check_finite(loss, "teacher pretraining loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(mse=loss.item(), target_mean=target.mean().item())
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch,
               lambda: teacher_validation(teacher, val_set, cfg["train"]["batch_size"], device),
               {"teacher": teacher}, [scheduler], Selection("mse", "min"), history_path, "pretrain_teacher",
               {"optimizer": optimizer, "scheduler": scheduler, "corruptor": corruptor}, resume)
    teacher.load_state_dict(best["teacher"])
    return teacher


# ---------------------------------------------------------------- stage 2: student baseline, segmenters

def gt_bce(logits: torch.Tensor, batch: dict[str, torch.Tensor], cfg: dict) -> torch.Tensor:
    """Per-image BCE against the ground truth over labelled (not ignored) pixels, shape (B,)."""
    return per_image_bce_with_logits(logits, batch["mask"], cfg["train"]["pos_weight"], valid=batch["valid"])


def train_segmenter(cfg: dict, seed: int, files: DataFiles, model: nn.Module, epochs: int,
                    history_path: str | Path, device: torch.device, resume: Checkpointing | None = None,
                    stage: str = "student_baseline") -> nn.Module:
    """BCE only, from scratch: the baseline student and the convolutional segmenters."""
    data = labelled_data(cfg, seed, files, device)
    model = model.to(device)
    optimizer = make_optimizer(model.parameters(), cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), stage, epoch):
            batch = to_device(batch, device)
            loss = gt_bce(model(batch["image"]), batch, cfg).mean()
            check_finite(loss, f"{stage} BCE")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(bce=loss.item())
        return tracker.means()

    best = fit(epochs, train_epoch, lambda: student_validation(model, data.val_items, cfg, device)[0],
               {"model": model}, [scheduler], Selection("iou"), history_path, stage,
               {"optimizer": optimizer, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg))
    model.load_state_dict(best["model"])
    return model


def train_student_baseline(cfg: dict, seed: int, files: DataFiles, history_path: str | Path,
                           device: torch.device, resume: Checkpointing | None = None) -> nn.Module:
    """The ViT student with BCE only, from scratch."""
    return train_segmenter(cfg, seed, files, new_student(cfg, device), cfg["student_baseline"]["epochs"],
                           history_path, device, resume)


# ---------------------------------------------------------------- stage 3: joint training

def joint_train(cfg: dict, seed: int, files: DataFiles, teacher: nn.Module, history_path: str | Path,
                device: torch.device, resume: Checkpointing | None = None) -> tuple[nn.Module, nn.Module]:
    """Student and teacher together; returns (teacher, student) of the best validation epoch.

    Per step: the student minimises its per-image BCE plus ``teacher_loss_weight`` times the
    (frozen) teacher's predicted loss of its own output; then the teacher regresses the
    student's true per-image BCE, and that of a batch of corrupted GT masks so it keeps the
    whole error range.
    """
    stage_cfg = cfg["joint"]
    data = labelled_data(cfg, seed, files, device)
    teacher = teacher.to(device)
    student = new_student(cfg, device)
    opt_s, opt_t = make_optimizer(student.parameters(), cfg["train"]), make_optimizer(teacher.parameters(), cfg["train"])
    schedulers = [make_scheduler(opt_s, cfg["train"]), make_scheduler(opt_t, cfg["train"])]
    corruptor = MaskCorruptor(cfg["teacher_pretrain"]["corruption"], seed=seed + 1)
    weight = stage_cfg["teacher_loss_weight"]

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        teacher.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "joint", epoch):
            corrupted = corruptor.corrupt_batch(batch["mask"]) if stage_cfg["corrupted_batch"] else None
            batch = to_device(batch, device)
            image, mask = batch["image"], batch["mask"]
            logits = student(image)
            prob = torch.sigmoid(logits)
            bce = gt_bce(logits, batch, cfg)
            with frozen(teacher):
                predicted = teacher(image, prob)
            loss_s = (bce + weight * predicted).mean()
            check_finite(loss_s, "joint student loss")
            opt_s.zero_grad(set_to_none=True)
            loss_s.backward()
            opt_s.step()

            target = per_image_bce(prob.detach(), mask, valid=batch["valid"])
            loss_t = F.mse_loss(teacher(image, prob.detach()), target)
            if corrupted is not None:
                corrupted = corrupted.to(device)
                loss_t = loss_t + F.mse_loss(teacher(image, corrupted), per_image_bce(corrupted, mask, valid=batch["valid"]))
            check_finite(loss_t, "joint teacher loss")
            opt_t.zero_grad(set_to_none=True)
            loss_t.backward()
            opt_t.step()
            tracker.add(student_loss=loss_s.item(), bce=bce.mean().item(),
                        teacher_predicted=predicted.mean().item(), teacher_mse=loss_t.item())
        return tracker.means()

    def validate() -> dict[str, float]:
        values, probs = student_validation(student, data.val_items, cfg, device)
        agreement = summarise_teacher(teacher_predictions(teacher, data.val_items, probs, cfg["input_size"], device))
        teacher.train()
        return {**values, "teacher_mae": agreement["mae"], "teacher_spearman": agreement["spearman"]}

    best = fit(stage_cfg["epochs"], train_epoch, validate, {"student": student, "teacher": teacher},
               schedulers, Selection("iou"), history_path, "joint",
               {"optimizer_student": opt_s, "optimizer_teacher": opt_t, "scheduler_student": schedulers[0],
                "scheduler_teacher": schedulers[1], "corruptor": corruptor}, resume, CollapseGuard.from_config(cfg))
    student.load_state_dict(best["student"])
    teacher.load_state_dict(best["teacher"])
    return teacher, student


# ---------------------------------------------------------------- stage 4: knowledge expansion

def expand_student(cfg: dict, seed: int, files: DataFiles, student: nn.Module, teacher: nn.Module,
                   history_path: str | Path, device: torch.device, resume: Checkpointing | None = None) -> nn.Module:
    """Train the student on unlabelled images to minimise the frozen teacher's predicted loss.

    Validation IoU on the labelled validation split picks the kept epoch (of epochs 1..N).
    """
    stage_cfg = cfg["expand"]
    size = cfg["input_size"]
    student, teacher = student.to(device), freeze(teacher.to(device))
    transform = train_augmentation(seed, keys=("image",)) if cfg["train"]["augment"] else None
    if files.pool is None:
        raise ValueError("expansion needs the pool store (DataFiles.pool)")
    pool = PoolCrops(TileStore(files.pool), size, seed, transform=transform)
    loader = make_loader(pool, cfg, seed, device, limit=stage_cfg["images_per_epoch"])
    val_items = files.split_items("val")
    optimizer = make_optimizer(student.parameters(), cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker, seen = MeanTracker(), 0
        for batch in progress(loader.epoch(epoch), "expand", epoch):
            image = batch["image"].to(device, non_blocking=True)
            prob = torch.sigmoid(student(image))
            loss = teacher(image, prob).mean()
            check_finite(loss, "expansion loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(teacher_predicted=loss.item(), predicted_fraction=(prob > 0.5).float().mean().item())
            seen += len(image)
        return {**tracker.means(), "pool_images": seen}

    best = fit(stage_cfg["epochs"], train_epoch,
               lambda: student_validation(student, val_items, cfg, device)[0],
               {"student": student}, [scheduler], Selection("iou"), history_path, "expand",
               {"optimizer": optimizer, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg))
    student.load_state_dict(best["student"])
    return student


# ---------------------------------------------------------------- distillation conditions

def distill_from_soft_labels(cfg: dict, seed: int, files: DataFiles, soft: SoftLabelStore,
                             history_path: str | Path, device: torch.device,
                             resume: Checkpointing | None = None) -> nn.Module:
    """A ViT student from scratch on hard and soft labels (ensemble distillation):
    BCE(GT) + alpha * MSE(sigmoid(z / T), ensemble mean at T), over labelled pixels."""
    stage_cfg = cfg["ensemble_distillation"]
    alpha, temperature = stage_cfg["alpha"], stage_cfg["temperature"]
    data = labelled_data(cfg, seed, files, device, soft=soft)
    student = new_student(cfg, device)
    optimizer = make_optimizer(student.parameters(), cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "ensemble_distilled", epoch):
            batch = to_device(batch, device)
            logits = student(batch["image"])
            bce = gt_bce(logits, batch, cfg)
            mse = per_image_mse(torch.sigmoid(logits / temperature), batch["soft"], valid=batch["valid"])
            loss = (bce + alpha * mse).mean()
            check_finite(loss, "ensemble distillation loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(loss=loss.item(), bce=bce.mean().item(), soft_mse=mse.mean().item())
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, device)[0],
               {"student": student}, [scheduler], Selection("iou"), history_path, "ensemble_distilled",
               {"optimizer": optimizer, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg))
    student.load_state_dict(best["student"])
    return student


def pseudo_label_targets(pseudo: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels (p >= 0.5) and the map of confident pixels (max(p, 1-p) >= threshold)."""
    return (pseudo >= 0.5).float(), (torch.maximum(pseudo, 1.0 - pseudo) >= threshold).float()


def self_train(cfg: dict, seed: int, files: DataFiles, pseudo_manifest: str | Path, student: nn.Module,
               history_path: str | Path, device: torch.device, resume: Checkpointing | None = None) -> nn.Module:
    """Pseudo-label self-training: each step one labelled batch (BCE against the GT) and one
    pool batch (BCE against the teacher's confident hard labels, pool_weight times).

    An epoch is ``expand.images_per_epoch`` pool images for ``expand.epochs`` epochs, so the
    student sees as many pool images as knowledge expansion does; the labelled crops repeat as needed.
    """
    stage_cfg = cfg["pseudo_label"]
    size = cfg["input_size"]
    if files.pool is None:
        raise ValueError("self-training needs the pool store (DataFiles.pool)")
    data = labelled_data(cfg, seed, files, device)
    transform = train_augmentation(seed + 1, keys=("image", "pseudo")) if cfg["train"]["augment"] else None
    pool = PoolCrops(TileStore(files.pool), size, seed, transform=transform,
                     pseudo=TileStore(pseudo_manifest, "pseudo"))
    pool_loader = make_loader(pool, cfg, seed, device, limit=cfg["expand"]["images_per_epoch"])
    student = student.to(device)
    optimizer = make_optimizer(student.parameters(), cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])
    threshold, weight = stage_cfg["threshold"], stage_cfg["pool_weight"]

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker, seen = MeanTracker(), 0
        labelled = cycle(data.train, epoch)
        for pool_batch in progress(pool_loader.epoch(epoch), "pseudo_labelled", epoch):
            batch = to_device(next(labelled), device)
            pool_batch = to_device(pool_batch, device)
            target, confident = pseudo_label_targets(pool_batch["pseudo"], threshold)
            bce = gt_bce(student(batch["image"]), batch, cfg)
            pool_bce = per_image_bce_with_logits(student(pool_batch["image"]), target, cfg["train"]["pos_weight"],
                                                 valid=confident)
            loss = bce.mean() + weight * pool_bce.mean()
            check_finite(loss, "self-training loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(loss=loss.item(), bce=bce.mean().item(), pool_bce=pool_bce.mean().item(),
                        confident_fraction=confident.mean().item(), pseudo_foreground=target.mean().item())
            seen += len(pool_batch["image"])
        return {**tracker.means(), "pool_images": seen}

    best = fit(cfg["expand"]["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, device)[0],
               {"student": student}, [scheduler], Selection("iou"), history_path, "pseudo_labelled",
               {"optimizer": optimizer, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg))
    student.load_state_dict(best["student"])
    return student


def feature_distill(cfg: dict, seed: int, files: DataFiles, teacher: nn.Module, history_path: str | Path,
                    device: torch.device, resume: Checkpointing | None = None) -> nn.Module:
    """A small ViT student (feature_distillation.student) from scratch:
    BCE(GT) + feature_weight * MSE(projection(student map), teacher map)
    + response_weight * BCE(student logits, sigmoid(teacher logits)), over labelled pixels."""
    stage_cfg = cfg["feature_distillation"]
    size = cfg["input_size"]
    data = labelled_data(cfg, seed, files, device)
    teacher = freeze(teacher.to(device))
    student = build_student(stage_cfg["student"], size).to(device)
    teacher_tap = FeatureTap(teacher, stage_cfg["teacher_layer"])
    student_tap = FeatureTap(student, stage_cfg["student_layer"])
    projection = FeatureProjection(feature_channels(student, student_tap, size),
                                   feature_channels(teacher, teacher_tap, size)).to(device)
    optimizer = make_optimizer([*student.parameters(), *projection.parameters()], cfg["train"])
    scheduler = make_scheduler(optimizer, cfg["train"])
    w_feature, w_response = stage_cfg["feature_weight"], stage_cfg["response_weight"]

    def train_epoch(epoch: int) -> dict[str, float]:
        student.train()
        tracker = MeanTracker()
        for batch in progress(data.train.epoch(epoch), "feature_distilled", epoch):
            batch = to_device(batch, device)
            with torch.no_grad():
                teacher_prob = torch.sigmoid(teacher(batch["image"]))
            teacher_map = teacher_tap.output
            logits = student(batch["image"])
            feature = F.mse_loss(projection(student_tap.output, teacher_map.shape[-2:]), teacher_map)
            response = per_image_bce_with_logits(logits, teacher_prob, valid=batch["valid"]).mean()
            bce = gt_bce(logits, batch, cfg).mean()
            loss = bce + w_feature * feature + w_response * response
            check_finite(loss, "feature distillation loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tracker.add(loss=loss.item(), bce=bce.item(), feature_mse=feature.item(), response_bce=response.item())
        return tracker.means()

    best = fit(stage_cfg["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, device)[0],
               {"student": student, "projection": projection}, [scheduler], Selection("iou"), history_path,
               "feature_distilled", {"optimizer": optimizer, "scheduler": scheduler}, resume,
               CollapseGuard.from_config(cfg))
    teacher_tap.remove()
    student_tap.remove()
    student.load_state_dict(best["student"])
    return student
