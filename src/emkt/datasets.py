"""Training datasets over the packed store: random crops, seeded per (seed, epoch, index)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import normalise_image, random_crop


class _EpochSeeded(Dataset):
    """Randomness drawn from (seed, epoch, index): identical crops whatever the worker count,
    and a resumed run sees the same data as an uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


class LabelledCrops(_EpochSeeded):
    """Random training crops of labelled images: {"image": (1,S,S), "mask": (1,S,S)} tensors.

    ``store`` is an emkt.store.LabelledStore; ``ids`` the store ids of the training split.
    Crops are z-scored with their whole image's statistics, as evaluation normalises whole images.
    """

    def __init__(self, store, ids: Sequence[int], size: int, seed: int, crops_per_image: int = 1,
                 transform: Callable | None = None) -> None:
        super().__init__(seed)
        self.store, self.ids = store, [int(i) for i in ids]
        self.size, self.crops_per_image, self.transform = size, crops_per_image, transform

    def __len__(self) -> int:
        return len(self.ids) * self.crops_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        image_id = self.ids[index % len(self.ids)]
        mean, std = self.store.stats(image_id)
        image, mask = random_crop([self.store.image(image_id), self.store.labels(image_id) > 0], self.size, rng)
        image = (image.astype(np.float32) - mean) / max(std, 1e-6)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None],
                  "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float()}
        return _augment(self.transform, sample, rng)


class PoolCrops(_EpochSeeded):
    """Random crops of unlabelled pool tiles (an emkt.store.TileStore), each tile z-scored
    on its own; read from disk on demand, so memory does not grow with the pool."""

    def __init__(self, store, size: int, seed: int, transform: Callable | None = None) -> None:
        super().__init__(seed)
        if store.tile < size:
            raise ValueError(f"pool tiles of {store.tile} px are smaller than input_size {size}; "
                             "raise store.pool_tile and repack")
        self.store, self.size, self.transform = store, size, transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        (image,) = random_crop([normalise_image(self.store.tile_at(index))], self.size, rng)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None]}
        return _augment(self.transform, sample, rng)


def _augment(transform: Callable | None, sample: dict[str, torch.Tensor],
             rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Apply a MONAI transform seeded from the sample's own generator; keep only the tensors
    (MONAI adds '<key>_transforms' trace lists that the default collate cannot batch)."""
    if transform is None:
        return sample
    transform.set_random_state(seed=int(rng.integers(2**31)))
    out = transform(sample)
    return {key: out[key] for key in sample}
