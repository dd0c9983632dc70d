"""The one training loop that every stage runs, and what it is made of.

A stage (emkt.training.supervised, .teacher, .expansion, .distillation, .self_training)
says only what one epoch of steps and one validation are, as two small functions; ``fit``
does the rest: train an epoch, validate, append a row to the per-epoch CSV, keep the weights
of the best epoch (``Selection``), save the resumable state (emkt.resume), and stop a run
whose losses are not finite (``check_finite``) or whose student collapses
(``CollapseGuard``), or that a stage's ``early_stop`` ends.

Also here: the optimiser and learning-rate schedule every stage uses (``optimisation``),
epoch means (``MeanTracker``), a temporarily frozen module (``frozen``) and the progress bar
of an epoch (``progress``).
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..acceleration import Runtime, Update
from ..distributed import ProcessGroup, current, mean_over_ranks
from ..files import atomic_path
from ..models import freeze
from ..resume import Checkpointing

log = logging.getLogger(__name__)


def make_optimizer(parameters, train_cfg: dict) -> torch.optim.Optimizer:
    """The one optimiser every model and stage uses (config section 'train')."""
    name, lr, wd = train_cfg["optimizer"], train_cfg["lr"], train_cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=wd)
    if name == "radam":
        return torch.optim.RAdam(parameters, lr=lr, weight_decay=wd, decoupled_weight_decay=True)
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
