"""What the stages train on: batches of crops for this process, the same for any number of
processes and after a resume.

``EpochSampler`` draws each epoch's order from (seed, epoch) and cuts it into whole global
batches; ``make_loader`` wraps a dataset (emkt.datasets) in a DataLoader with the config's
loader settings; ``labelled_data`` gives a stage its training crops of the labelled store
and its whole validation images (emkt.store.DataFiles names the files); ``cycle`` repeats a
loader for a stage whose epoch is set by another one (the pool's).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..acceleration import Runtime
from ..augment import train_augmentation
from ..data import read_split
from ..datasets import LabelledCrops
from ..distributed import ProcessGroup, global_batch_slices, local_batch_size
from ..store import DataFiles, LabelledStore, SoftLabelStore


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
