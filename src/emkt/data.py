"""Reading EM images and masks, indexing the CEM-MitoLab layout, splitting, and datasets.

Layout read here (CEM-MitoLab, EMPIAR-11037):
    <labelled_dir>/<source>/images/<name>.tif(f)   2D grey image
    <labelled_dir>/<source>/masks/<name>.tif(f)    2D instance (or binary) labels, 0 = background
and an unlabelled pool (CEM1.5M, EMPIAR-11035): any tree of 2D TIFF images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import tifffile
import torch
from torch.utils.data import Dataset

TIFF_SUFFIXES = (".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataFileError(ValueError):
    """An input file is missing, unreadable or of an unexpected shape."""


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D grey image as float32 in [0, 1]; RGB is averaged to grey, 16-bit rescaled."""
    array = _read_tiff(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].mean(axis=-1)
    if array.ndim != 2:
        raise DataFileError(f"{path}: expected a 2D image, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        scale = np.iinfo(array.dtype).max if array.dtype != np.uint8 else 255
        return array.astype(np.float32) / float(scale)
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a 2D instance or binary mask as a {0, 1} uint8 array (any label > 0 is foreground)."""
    array = _read_tiff(path)
    if array.ndim != 2:
        raise DataFileError(f"{path}: expected a 2D mask, got shape {array.shape}")
    return (array > 0).astype(np.uint8)


def _read_tiff(path: str | Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except Exception as error:  # tifffile raises many types for truncated or foreign files
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error


def normalise_image(image: np.ndarray) -> np.ndarray:
    """Per-image z-score, so sources with different contrast and brightness look alike.

    Stored in every checkpoint (emkt.checkpoints.NORMALISATION) so prediction repeats it.
    """
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def _tiff_shape(path: Path) -> tuple[int, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except Exception as error:
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error
    return int(shape[0]), int(shape[1])


def _tiffs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())


def index_labelled(root: str | Path) -> pd.DataFrame:
    """One row per labelled image: path, mask, source, name, height, width.

    Every image needs a mask of the same name and shape; the first offending files are named.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: labelled data folder not found (config key 'data.labelled_dir')")
    rows, problems = [], []
    for source_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        image_dir, mask_dir = source_dir / "images", source_dir / "masks"
        if not image_dir.is_dir():
            continue
        for image in _tiffs(image_dir):
            mask = mask_dir / image.name
            if not mask.is_file():
                problems.append(f"{image}: no mask {mask}")
                continue
            shape, mask_shape = _tiff_shape(image), _tiff_shape(mask)
            if shape != mask_shape:
                problems.append(f"{image}: shape {shape} differs from its mask's {mask_shape}")
                continue
            rows.append({"path": str(image), "mask": str(mask), "source": source_dir.name,
                         "name": image.stem, "height": shape[0], "width": shape[1]})
    if problems:
        raise DataFileError(f"{len(problems)} labelled file(s) are unusable:\n  " + "\n  ".join(problems[:10]))
    if not rows:
        raise DataFileError(f"{root}: no <source>/images/*.tif(f) with masks found")
    return pd.DataFrame(rows)


def index_unlabelled(root: str | Path) -> pd.DataFrame:
    """One row per unlabelled image (found recursively): path, source (first sub-folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: unlabelled data folder not found (config key 'data.unlabelled_dir')")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
    if not paths:
        raise DataFileError(f"{root}: no TIFF images found")
    sources = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in paths]
    return pd.DataFrame({"path": [str(p) for p in paths], "source": sources})


def split_index(index: pd.DataFrame, train: float, val: float, test: float, seed: int) -> pd.DataFrame:
    """Seeded random split; adds a ``split`` column. Each split gets at least one image
    when there are at least three, so tiny data sets still run the whole pipeline."""
    n = len(index)
    n_test = int(round(test * n))
    n_val = int(round(val * n))
    if n >= 3:
        n_test = max(n_test, 1) if test > 0 else 0
        n_val = max(n_val, 1) if val > 0 else 0
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ValueError(f"{n} labelled images are too few for the split fractions {train}/{val}/{test}")
    order = np.random.default_rng(seed).permutation(n)
    labels = np.empty(n, dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_val]] = "val"
    labels[order[n_train + n_val:]] = "test"
    out = index.copy()
    out["split"] = labels
    return out


def read_split(path: str | Path, split: str) -> pd.DataFrame:
    """Rows of one split from the split CSV, the single source of truth for later rules."""
    table = pd.read_csv(path)
    missing = {"path", "mask", "source", "split"} - set(table.columns)
    if missing:
        raise DataFileError(f"{path}: split file lacks columns {sorted(missing)}")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataFileError(f"{path}: the '{split}' split is empty")
    return rows


def random_crop(arrays: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` x ``size`` window of each array; smaller arrays are padded
    first (reflection for images, zeros for masks, by the caller's order: image first)."""
    height, width = arrays[0].shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        arrays = [np.pad(a, pads, mode="reflect" if i == 0 else "constant") for i, a in enumerate(arrays)]
        height, width = arrays[0].shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return [a[top:top + size, left:left + size] for a in arrays]


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
    """Random training crops of labelled images: {"image": (1,S,S), "mask": (1,S,S)} tensors."""

    def __init__(self, table: pd.DataFrame, size: int, seed: int, crops_per_image: int = 1,
                 cache: bool = True, transform: Callable | None = None) -> None:
        super().__init__(seed)
        self.images, self.masks = list(table["path"]), list(table["mask"])
        self.size, self.crops_per_image, self.transform = size, crops_per_image, transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def load(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image and binary mask of labelled image ``item``."""
        if self._cache is not None and item in self._cache:
            return self._cache[item]
        pair = normalise_image(read_image(self.images[item])), read_mask(self.masks[item])
        if pair[0].shape != pair[1].shape:
            raise DataFileError(f"{self.images[item]}: shape {pair[0].shape} differs from its mask's {pair[1].shape}")
        if self._cache is not None:
            self._cache[item] = pair
        return pair

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        image, mask = random_crop(list(self.load(index % len(self.images))), self.size, rng)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None].float(),
                  "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float()}
        return _augment(self.transform, sample, rng)


class UnlabelledCrops(_EpochSeeded):
    """Random crops of unlabelled images, read from disk on demand (the pool does not fit in memory)."""

    def __init__(self, paths: list[str], size: int, seed: int, transform: Callable | None = None) -> None:
        super().__init__(seed)
        self.paths, self.size, self.transform = list(paths), size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._rng(index)
        (image,) = random_crop([normalise_image(read_image(self.paths[index]))], self.size, rng)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(image))[None].float()}
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


def load_whole_images(table: pd.DataFrame) -> list[dict]:
    """Whole normalised images with masks for validation and testing: name, source, image, mask."""
    items = []
    for row in table.itertuples():
        image, mask = normalise_image(read_image(row.path)), read_mask(row.mask)
        if image.shape != mask.shape:
            raise DataFileError(f"{row.path}: shape {image.shape} differs from its mask's {mask.shape}")
        items.append({"name": f"{row.source}/{Path(row.path).name}", "source": row.source,
                      "image": image, "mask": mask})
    return items
