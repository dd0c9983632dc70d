"""The four training stages: teacher pretraining, student baseline, joint training, expansion.

Each stage is a per-epoch loop with the same shape (``fit``): train one epoch, validate,
log a row to the per-epoch CSV, keep the best epoch's weights. Stage functions only say
what one step and one validation are.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

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
from .acceleration import Runtime, Update
from .distributed import ProcessGroup, current, gather, global_batch_slices, local_batch_size, mean_over_ranks, shard
from .evaluate import score_segmenter, summarise_teacher, teacher_predictions
from .losses import (per_image_kl_with_logits, per_image_loss, per_image_loss_of_prob, per_image_mse,
                     pixel_loss_of_prob)
from .metrics import SegmentationMeter
from .models import (FeatureProjection, FeatureTap, build_student, build_teacher, feature_channels, freeze,
                     is_dense_teacher, teacher_arch)
from .resume import Checkpointing
from .store import LabelledStore, SoftLabelStore, TileStore
from .files import atomic_path

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- building blocks

class EpochSampler(Sampler[int]):
    """This process's part of a permutation drawn from (seed, epoch), optionally of the first
    ``limit`` indices, cut into whole global batches (emkt.distributed.global_batch_slices).

    Per-epoch seeding makes the order independent of how many epochs ran before in this
    process, which a resumed job needs; every rank draws the same permutation, so the global
    batches do not depend on the number of processes.
    """

    def __init__(self, size: int, seed: int, global_batch: int, limit: int | None = None,
                 group: ProcessGroup | None = None) -> None:
        self.size, self.seed, self.epoch, self.global_batch = size, seed, 0, global_batch
        self.limit = size if limit is None else min(limit, size)
        self.group = group or ProcessGroup()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.size)[: self.limit]
        if self.group.world == 1 and len(order) >= self.global_batch:
            # one process: a view and a generator, not a list (a Python int per pool image
            # would be ~60 MB at 1.6 M); the incomplete last batch is dropped
            return (int(i) for i in order[: len(order) // self.global_batch * self.global_batch])
        return iter(global_batch_slices(order.tolist(), self.global_batch, self.group))

    def __len__(self) -> int:
        if self.limit >= self.global_batch:
            return self.limit // self.global_batch * self.global_batch // self.group.world
        return self.limit if self.group.world == 1 else self.global_batch // self.group.world


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


def make_loader(dataset: Dataset, cfg: dict, seed: int, runtime: Runtime, limit: int | None = None) -> Loader:
    """Batches of ``dataset`` for this process: train.batch_size images per step over all
    processes, with the config's worker, pinning and prefetch settings (section 'loader')."""
    group = runtime.group
    global_batch = cfg["train"]["batch_size"]
    sampler = EpochSampler(len(dataset), seed, global_batch, limit, group)
    settings = cfg["loader"]
    workers = settings["num_workers"]
    pin = runtime.pin_memory if settings["pin_memory"] == "auto" else settings["pin_memory"]
    # The sampler already drops the incomplete last global batch (a last batch of one image
    # breaks the teacher's BatchNorm); a dataset smaller than one batch gives one short batch.
    loader = DataLoader(
        dataset, batch_size=local_batch_size(global_batch, group.world), sampler=sampler, drop_last=False,
        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0 and settings["persistent_workers"],
        prefetch_factor=settings["prefetch_factor"] if workers > 0 else None,
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


def optimisation(runtime: Runtime, model: nn.Module,
                 train_cfg: dict) -> tuple[nn.Module, Update, torch.optim.lr_scheduler.StepLR]:
    """What a stage trains ``model`` with: the module for its steps (runtime.trainable), the
    optimiser update and the learning-rate schedule (config section 'train')."""
    trained = runtime.trainable(model)
    update = runtime.update(make_optimizer(model.parameters(), train_cfg))
    return trained, update, make_scheduler(update.optimizer, train_cfg)


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


def check_finite(values: dict[str, float], stage: str) -> None:
    """Stop a stage whose epoch means are NaN or infinite (a NaN loss makes every later one
    NaN, so the epoch mean shows it) before anything of that epoch is saved."""
    bad = {key: value for key, value in values.items() if not np.isfinite(value)}
    if bad:
        raise FloatingPointError(f"{stage}: train {', '.join(f'{k} became {v}' for k, v in bad.items())}; "
                                 "stopping instead of saving a useless model")


class MeanTracker:
    """Running means of named scalars over an epoch.

    Tensors are summed where they live and read once, in ``means()``: a ``.item()`` per step
    would make the CPU wait for the GPU at every step.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, **values: torch.Tensor | float) -> None:
        for key, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: float(self.sums[key]) / self.counts[key] for key in self.sums}


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


class KeptStudent(NamedTuple):
    """What a student stage that may keep its start returns: the student of the kept epoch and
    that epoch (0: the start, validated first when the stage fine-tunes a trained network, and
    kept when no epoch beats it; the workflow writes it to the checkpoint, emkt.checkpoints.kept_epoch_extra)."""

    student: nn.Module
    kept_epoch: int


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
        guard: CollapseGuard | None = None, group: ProcessGroup | None = None,
        validate_start: bool = False, early_stop: Callable[[list[dict]], str | None] | None = None
        ) -> dict[str, dict]:
    """Run ``epochs`` epochs; return the state dicts of ``models`` at the best epoch.

    After every epoch a row (train means, validation values, learning rate, seconds) is
    appended to the per-epoch CSV, rewritten atomically so it is readable at any time, and,
    with ``resume``, the whole training state is saved so a killed job continues from there.
    ``stateful`` names what the state must hold besides the models (optimisers, schedulers,
    the corruptor). ``guard`` stops a collapsing run with TrainingCollapsed.

    ``validate_start``: the models as they come are validated first (row of epoch 0) and are
    a candidate like any epoch, so a stage that starts from a trained model (expansion) never
    returns one worse on validation than its start. ``early_stop(rows)`` returns a reason to
    end the stage after an epoch (logged; the best epoch so far is kept), or None.

    With several processes (``group``), the train values are averaged over ranks (counts
    named ``*_images`` are summed), ``validate`` must return values already merged over
    ranks, and only rank 0 writes the CSV and the state; every rank resumes from it, whatever
    the number of processes that wrote it.
    """
    group = group or ProcessGroup()
    stateful = {**{f"model:{k}": m for k, m in models.items()}, **(stateful or {})}
    rows: list[dict] = []
    best_states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    first = 1
    if resume is not None and (state := resume.load(stateful)) is not None:
        rows, best_states, first = state["rows"], state["best_states"], state["epoch"] + 1
        selection.best, selection.epoch = state["selection"]
    elif validate_start:
        rows.append(_start_row(validate(), schedulers))
        _write_history(rows, history_path, group)
        selection.best, selection.epoch = rows[0][f"val_{selection.key}"], 0
        log.info("%s: before training, val %s = %.4g", stage, selection.key, selection.best)
    stopped = early_stop(rows) if early_stop is not None and first > 1 else None  # a resumed stage that had stopped
    for epoch in range(first, epochs + 1 if stopped is None else first):
        start = time.perf_counter()
        lr = schedulers[0].get_last_lr()[0] if schedulers else float("nan")
        train_values = reduce_train_values(train_epoch(epoch), group)
        check_finite(train_values, stage)
        for scheduler in schedulers:
            scheduler.step()
        val_values = validate()
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_values.items()},
               **{f"val_{k}": v for k, v in val_values.items()}, "lr": lr,
               "seconds": time.perf_counter() - start}
        rows.append(row)
        _write_history(rows, history_path, group)
        value = val_values[selection.key]
        if selection.improves(value):
            selection.best, selection.epoch = value, epoch
            best_states = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
        log.info("%s epoch %d/%d: %s", stage, epoch, epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if resume is not None and group.main:
            resume.save(epoch, rows, (selection.best, selection.epoch), best_states, stateful)
        if guard is not None:
            guard.check(rows, stage)
        if early_stop is not None and (stopped := early_stop(rows)) is not None:
            log.warning("%s: stopping after epoch %d of %d: %s", stage, epoch, epochs, stopped)
            break
    if first > epochs or stopped is not None:  # resumed after the end: the history file may have been removed
        _write_history(rows, history_path, group)
    log.info("%s: kept epoch %d (val %s = %.4g)", stage, selection.epoch, selection.key, selection.best)
    return best_states


def _start_row(val_values: dict[str, float], schedulers: list) -> dict:
    """The history row of epoch 0: validation of the models before any training."""
    lr = schedulers[0].get_last_lr()[0] if schedulers else float("nan")
    return {"epoch": 0, **{f"val_{k}": v for k, v in val_values.items()}, "lr": lr, "seconds": 0.0}


def _write_history(rows: list[dict], path: str | Path, group: ProcessGroup) -> None:
    """The per-epoch CSV, rewritten atomically (readable at any time); rank 0 only."""
    if group.main:
        with atomic_path(path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)


def reduce_train_values(values: dict[str, float], group: ProcessGroup) -> dict[str, float]:
    """Epoch means averaged over ranks; image counts (keys ending in '_images') summed."""
    reduced = mean_over_ranks(values, group)
    return {key: value * group.world if key.endswith("_images") else value for key, value in reduced.items()}


def progress(iterable, stage: str, epoch: int):
    """tqdm over the batches of one epoch, into the job's log (stderr); rank 0 only."""
    return tqdm(iterable, desc=f"{stage} epoch {epoch}", mininterval=10, leave=False, disable=not current().main)


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


def labelled_data(cfg: dict, seed: int, files: DataFiles, runtime: Runtime,
                  soft: SoftLabelStore | None = None) -> StageData:
    """Training crops {"image", "mask", "valid"} (and "soft" with soft labels) and whole validation images."""
    keys = ("image", "mask", "valid", "soft") if soft is not None else ("image", "mask", "valid")
    transform = train_augmentation(seed, keys=keys) if cfg["train"]["augment"] else None
    crops = LabelledCrops(LabelledStore(files.labelled), read_split(files.split, "train")["id"], cfg["input_size"],
                          seed, crops_per_image=cfg["loader"]["crops_per_image"], transform=transform,
                          ignore_label=files.ignore_label, soft=soft)
    return StageData(make_loader(crops, cfg, seed, runtime), files.split_items("val"))


def cycle(loader: Loader, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``loader`` without end: passes (epoch, 0), (epoch, 1), ... each reshuffled,
    for a stage whose epoch is set by another loader."""
    for repeat in itertools.count():
        yield from loader.epoch(epoch * 100_000 + repeat)


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


def new_student(cfg: dict) -> nn.Module:
    return build_student(cfg["student"], cfg["input_size"])


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


# ---------------------------------------------------------------- stage 1: teacher pretraining

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


# ---------------------------------------------------------------- stage 2: student baseline, segmenters

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

    best = fit(epochs, train_epoch, lambda: student_validation(model, data.val_items, cfg, rt)[0],
               {"model": model}, [scheduler], Selection("iou"), history_path, stage,
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group)
    model.load_state_dict(best["model"])
    return model


def train_student_baseline(cfg: dict, seed: int, files: DataFiles, history_path: str | Path,
                           device: torch.device | str, resume: Checkpointing | None = None) -> nn.Module:
    """The ViT student with BCE only, from scratch."""
    return train_segmenter(cfg, seed, files, new_student(cfg), cfg["student_baseline"]["epochs"],
                           history_path, device, resume)


# ---------------------------------------------------------------- stage 3: joint training

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
        values, probs = student_validation(student, data.val_items, cfg, rt)
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


# ---------------------------------------------------------------- stage 4: knowledge expansion

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
    best = fit(stage_cfg["epochs"], train_epoch, lambda: student_validation(student, val_items, cfg, rt)[0],
               {"student": student}, schedulers, selection, history_path, f"expand_{variant}",
               stateful, resume, CollapseGuard.from_config(cfg), rt.group,
               validate_start=True, early_stop=ExpansionGuard.from_config(cfg, files))
    student.load_state_dict(best["student"])
    return KeptStudent(student, selection.epoch)


# ---------------------------------------------------------------- distillation conditions

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

    best = fit(stage_cfg["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student}, [scheduler], Selection("iou"), history_path, "ensemble_distilled",
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group)
    student.load_state_dict(best["student"])
    return student


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
    best = fit(cfg["expand"]["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student}, [scheduler], selection, history_path, "pseudo_labelled",
               {"optimizer": update, "scheduler": scheduler}, resume, CollapseGuard.from_config(cfg), rt.group,
               validate_start=from_trained)
    student.load_state_dict(best["student"])
    return KeptStudent(student, selection.epoch)


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

    best = fit(stage_cfg["epochs"], train_epoch, lambda: student_validation(student, data.val_items, cfg, rt)[0],
               {"student": student, "projection": projection}, [scheduler], Selection("iou"), history_path,
               "feature_distilled", {"optimizer": update, "scheduler": scheduler}, resume,
               CollapseGuard.from_config(cfg), rt.group)
    teacher_tap.remove()
    student_tap.remove()
    student.load_state_dict(best["student"])
    return student
