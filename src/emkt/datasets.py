"""Training datasets over the packed store: random crops, seeded per (seed, epoch, index)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import masks_from_labels, normalise_image, random_crop


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
    """Random training crops of labelled images: {"image", "mask", "valid"}, each a (1,S,S)
    float32 tensor; "valid" is 0 where the mask holds ``ignore_label`` and in padding.

    ``store`` is an emkt.store.LabelledStore; ``ids`` the store ids of the training split.
    Crops are z-scored with their whole image's statistics, as evaluation normalises whole images.
    A ``transform`` must move "valid" with "mask" (``train_augmentation(seed, keys=("image",
    "mask", "valid"))``), or the losses would ignore the wrong pixels. With ``soft`` (an
    emkt.store.SoftLabelStore) samples also hold "soft", the soft label of the same crop.
    """

    def __init__(self, store, ids: Sequence[int], size: int, seed: int, crops_per_image: int = 1,
                 transform: Callable | None = None, ignore_label: int | None = None, soft=None) -> None:
        super().__init__(seed)
        if ignore_label is not None and transform is not None and not _moves_with_mask(transform, "valid"):
            raise ValueError('the augmentation moves "mask" but not "valid"; build it with '
                             'train_augmentation(seed, keys=("image", "mask", "valid"))')
        self.store, self.ids = store, [int(i) for i in ids]
        self.size, self.crops_per_image, self.transform = size, crops_per_image, transform
        self.ignore_label, self.soft = ignore_label, soft

    def __len__(self) -> int:
        return len(self.ids) * self.crops_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        image_id = self.ids[index % len(self.ids)]
        mean, std = self.store.stats(image_id)
        mask, valid = masks_from_labels(self.store.labels(image_id), self.ignore_label)
        arrays = [self.store.image(image_id), mask, valid]
        if self.soft is not None:
            arrays.append(self.soft.mean(image_id))
        image, mask, valid, *soft = random_crop(arrays, self.size, rng)
        image = (image.astype(np.float32) - mean) / max(std, 1e-6)
        sample = {"image": _tensor(image), "mask": _tensor(mask), "valid": _tensor(valid)}
        if soft:
            sample["soft"] = _tensor(soft[0])
        return _augment(self.transform, sample, rng)


class PoolCrops(_EpochSeeded):
    """Random crops of unlabelled pool tiles (an emkt.store.TileStore), each tile z-scored
    on its own; read from disk on demand, so memory does not grow with the pool."""

    def __init__(self, store, size: int, seed: int, transform: Callable | None = None, pseudo=None) -> None:
        super().__init__(seed)
        if store.tile < size:
            raise ValueError(f"pool tiles of {store.tile} px are smaller than input_size {size}; "
                             "raise store.pool_tile and repack")
        if pseudo is not None and (len(pseudo) != len(store) or pseudo.tile != store.tile):
            raise ValueError(f"the pseudo-labels ({len(pseudo)} tiles of {pseudo.tile} px) do not match the pool "
                             f"({len(store)} tiles of {store.tile} px); rerun the pseudo_label_shard rule")
        self.store, self.size, self.transform, self.pseudo = store, size, transform, pseudo

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """{"image"} and, with pseudo-labels, {"pseudo": probability in [0, 1]} of the same crop."""
        rng = self._rng(index)
        arrays = [normalise_image(self.store.tile_at(index))]
        if self.pseudo is not None:
            arrays.append(self.pseudo.tile_at(index).astype(np.float32) / 255.0)
        crops = random_crop(arrays, self.size, rng)
        sample = {"image": _tensor(crops[0])}
        if self.pseudo is not None:
            sample["pseudo"] = _tensor(crops[1])
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


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A (1, H, W) float32 tensor of a 2D crop."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]


def _moves_with_mask(transform: Callable, key: str) -> bool:
    """Whether every step of a (MONAI Compose) transform that acts on "mask" also acts on ``key``."""
    steps = getattr(transform, "transforms", [transform])
    return all(key in getattr(step, "keys", ()) for step in steps if "mask" in getattr(step, "keys", ()))
