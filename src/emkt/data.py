"""Reading EM images and masks, normalising them, splitting, and whole images for evaluation.

Layout read by emkt.indexing (CEM-MitoLab, EMPIAR-11037):
    <labelled_dir>/<source>/images/<name>.tif(f)   2D grey image
    <labelled_dir>/<source>/masks/<name>.tif(f)    2D instance (or binary) labels, 0 = background
and an unlabelled pool (CEM1.5M, EMPIAR-11035): any tree of 2D TIFF images.

Images reach training through the packed store (emkt.store) and the datasets in
emkt.datasets; the readers here are what indexing, packing and prediction of new images
share, so all of them see the same pixels. No torch here: the data rules run without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

TIFF_SUFFIXES = (".tif", ".tiff")
# What prediction of new images reads: TIFF, and PNG/JPEG (converted to grey as TIFFs are).
PREDICTION_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")
# Volumes (emkt.volumes) besides TIFF stacks: MRC files and Zarr / OME-Zarr folders.
MRC_SUFFIXES = (".mrc", ".map", ".rec")
ZARR_SUFFIX = ".zarr"  # also ends .ome.zarr
SPLITS = ("train", "val", "test")
SPLIT_GROUPINGS = ("none", "source", "block")


class DataFileError(ValueError):
    """An input file is missing, unreadable or of an unexpected shape."""


class ConversionError(DataFileError):
    """A readable file whose content cannot be used; ``reason`` is a short code for excluded.csv."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_tiff(path: str | Path, palette: bool = True) -> np.ndarray:
    """The first series of a TIFF file; unreadable or truncated files raise DataFileError.

    A palette (indexed-colour) image becomes its RGB colours when ``palette`` (images: its
    indices are not grey values); masks pass False, as their indices are the labels.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            array = tif.asarray()
            colormap = tif.pages.first.colormap if tif.pages.first.photometric == tifffile.PHOTOMETRIC.PALETTE else None
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except Exception as error:  # tifffile raises many types for truncated or foreign files
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error
    return apply_palette(array, colormap) if palette and colormap is not None else array


def apply_palette(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """uint8 RGB colours of palette indices; TIFF colour maps hold 16-bit values (v x 256 or
    v x 257 for 8-bit colours), as Pillow's conversion of a palette PNG gives them."""
    colours = np.asarray(colormap).T
    if colours.max(initial=0) > 255:
        colours = colours >> 8
    return colours.astype(np.uint8)[indices]


def printable(text: str | Path) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 (which Python keeps as
    surrogates) written as \\xNN escapes, so it can go into a CSV file or a log line."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _squeeze_2d(array: np.ndarray, path: str | Path, what: str, allow_rgb: bool) -> np.ndarray:
    """Drop leading singleton axes and a single trailing channel; a 3D stack (or RGB where
    not allowed) is an error."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    rgb = allow_rgb and array.ndim == 3 and array.shape[-1] in (3, 4)
    if array.ndim != 2 and not rgb:
        raise ConversionError(f"{path}: expected a 2D {what}, got shape {array.shape}", "not_2d")
    return array


def to_grey_uint8(array: np.ndarray, path: str | Path = "<array>",
                  value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """A 2D uint8 grey image and a note of what was converted ("" when nothing was).

    RGB(A) is averaged to grey; any dtype other than uint8 is rescaled per image from its
    min-max to 0-255. Per-image z-scoring follows anyway, so the rescale only sets the
    quantisation (8 bits, as EM images are acquired). ``value_range``: the (min, max) of the
    whole image when ``array`` is a band of it (emkt.bands), so bands convert as the whole would.
    """
    return grey_uint8(_squeeze_2d(array, path, "image", allow_rgb=True), path, value_range)


def grey_uint8(array: np.ndarray, path: str | Path = "<array>",
               value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """``to_grey_uint8`` of an array that is already 2D or RGB(A), e.g. a band of rows (which
    must not be squeezed: one row of an RGB image is not a grey image)."""
    grey, notes = grey_values(array, path)
    if grey.dtype != np.uint8:
        low, high = value_range if value_range is not None else (grey.min(), grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        grey = np.rint(scaled).astype(np.uint8)
    return grey, "; ".join(notes)


def grey_values(array: np.ndarray, path: str | Path = "<array>") -> tuple[np.ndarray, list[str]]:
    """The grey values of a 2D or RGB(A) array and the conversion notes: uint8 when no rescale
    is needed, else finite float64 values that to_grey_uint8 rescales by their min-max."""
    dtype, notes = array.dtype, []
    if array.ndim == 3:
        notes.append("rgb->grey")
        array = array[..., :3].astype(np.float64).mean(axis=-1)
        if dtype == np.uint8:
            return np.rint(array).astype(np.uint8), notes
    elif dtype == np.uint8:
        return np.asarray(array), notes
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ConversionError(f"{path}: image has NaN or infinite values", "non_finite")
    notes.append(f"{dtype}->uint8 min-max")
    return values, notes


def to_labels(array: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """A 2D integer label image (0 = background); float masks must hold whole numbers."""
    array = _squeeze_2d(array, path, "mask", allow_rgb=False)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise ConversionError(f"{path}: mask holds non-integer labels", "not_labels")
        array = array.astype(np.int64)
    if array.min() < 0:
        raise ConversionError(f"{path}: mask holds negative labels", "not_labels")
    return array


def find_images(folder: str | Path, recursive: bool = False, suffixes: tuple[str, ...] = PREDICTION_SUFFIXES) -> list[Path]:
    """Image files (``suffixes``, any case) in ``folder``, or its whole tree when ``recursive``,
    sorted; hidden files and folders (names starting with '.') are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates
                  if p.suffix.lower() in suffixes and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def is_zarr_path(path: Path) -> bool:
    return path.name.lower().endswith(ZARR_SUFFIX)


def find_volumes(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Zarr / OME-Zarr folders (not searched inside) and MRC files in ``folder`` (or its tree),
    sorted; hidden names are skipped. TIFF stacks are found with the other TIFFs and told
    apart by ``is_volume``."""
    folder, found = Path(folder), []

    def walk(current: Path) -> None:
        for entry in sorted(current.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_zarr_path(entry):
                    found.append(entry)
                elif recursive:
                    walk(entry)
            elif entry.suffix.lower() in MRC_SUFFIXES and entry.is_file():
                found.append(entry)

    if folder.is_dir():
        walk(folder)
    return sorted(found)


def masks_from_labels(labels: np.ndarray, ignore_label: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(mask, valid), both uint8 {0, 1}, from an instance label image.

    ``valid`` marks labelled pixels (all ones when ``ignore_label`` is None); ``mask`` is the
    foreground among them, so an ignored region is never foreground (its label is > 0).
    """
    valid = labels != ignore_label if ignore_label is not None else np.ones(labels.shape, dtype=bool)
    return ((labels > 0) & valid).astype(np.uint8), valid.astype(np.uint8)


def normalise_image(image: np.ndarray) -> np.ndarray:
    """Per-image z-score, so sources with different contrast and brightness look alike.

    Stored in every checkpoint (emkt.checkpoints.NORMALISATION) so prediction repeats it.
    """
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def grey_histogram(image: np.ndarray) -> np.ndarray:
    """Counts of the 256 values of a uint8 image; summed over bands, the whole image's."""
    return np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256)


def histogram_moments(histogram: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of a uint8 image from its histogram, in float64: the same
    numbers whether the image was counted whole or band by band (emkt.bands)."""
    values, total = np.arange(histogram.size, dtype=np.float64), float(histogram.sum())
    mean = float((histogram * values).sum() / total)
    return mean, float(np.sqrt((histogram * (values - mean) ** 2).sum() / total))


def zscore(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``normalise_image`` with given statistics (of the whole image, when ``image`` is a band)."""
    return (image.astype(np.float32) - np.float32(mean)) / np.float32(max(std, 1e-6))


def find_labelled_root(folder: str | Path, depth: int = 3) -> Path:
    """The folder whose sub-folders hold ``images/``: ``folder`` itself, or the single
    sub-folder an archive wraps it in (e.g. ``cem_mitolab/`` inside the extracted zip)."""
    folder = Path(folder)
    for _ in range(depth):
        children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
        if any((child / "images").is_dir() for child in children) or len(children) != 1:
            return folder
        folder = children[0]
    return folder


def split_index(index: pd.DataFrame, train: float, val: float, test: float, seed: int,
                group_by: str = "none", block_size: int = 4, block_gap: int = 0) -> pd.DataFrame:
    """Seeded split; adds a ``split`` column.

    ``group_by='none'`` splits images at random (the paper). ``'source'`` keeps every source
    data set (volume) in one split, so test images come from volumes never seen in training.
    ``'block'`` cuts each source's images, in name order, into runs of ``block_size`` and
    keeps every run in one split: consecutive sections of a volume are near-duplicates, so a
    random split would test on the neighbours of training sections. With ``block_gap`` > 0
    (block mode only) training images within ``block_gap`` positions of a val or test image
    of the same source get the split ``gap`` and are used nowhere.
    """
    if group_by not in SPLIT_GROUPINGS:
        raise ValueError(f"config key 'split.group_by' = {group_by!r}; allowed: {', '.join(SPLIT_GROUPINGS)}")
    out = index.copy()
    fractions = (train, val, test)
    if group_by == "source":
        out["split"] = _split_groups(index["source"].astype(str), fractions, seed, "source", "sources")
    elif group_by == "block":
        position = section_positions(index)
        blocks = index["source"].astype(str) + "#" + (position // block_size).astype(str)
        out["split"] = _split_groups(blocks, fractions, seed, "block",
                                     f"blocks (of split.block_size = {block_size} images)")
        if block_gap > 0:
            out["split"] = _guard_gaps(out["split"], index["source"].astype(str), position, block_gap)
    else:
        out["split"] = _split_items(len(index), fractions, seed)
    return out


def _natural_key(name: str) -> tuple:
    """'img2' before 'img10': digit runs compare as numbers, so unpadded section numbers keep their order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def section_positions(index: pd.DataFrame) -> pd.Series:
    """Each image's position (0, 1, ...) within its source in natural order of its path, i.e.
    of the file name inside the source's folder: the section order of a volume."""
    sources = index["source"].astype(str)
    ordered = sorted(index.index, key=lambda i: (sources[i], _natural_key(str(index.at[i, "path"]))))
    return sources[ordered].groupby(sources[ordered]).cumcount().reindex(index.index)


def _guard_gaps(split: pd.Series, sources: pd.Series, position: pd.Series, gap: int) -> pd.Series:
    """Training images at most ``gap`` sections from a val or test image of the same source
    become ``gap``: with contiguous blocks only sections next to a block boundary are affected."""
    split = split.copy()
    for _, rows in position.groupby(sources):
        line = np.zeros(rows.max() + 1, dtype=bool)
        line[rows.to_numpy()] = split[rows.index].isin(["val", "test"]).to_numpy()
        if not line.any():
            continue
        # distance along the section axis to the nearest held-out section
        distance = ndimage.distance_transform_edt(~line)[rows.to_numpy()]
        near = (distance <= gap) & (split[rows.index] == "train").to_numpy()
        split[rows.index[near]] = "gap"
    if not (split == "train").any():
        raise ValueError(f"config key 'split.block_gap' = {gap} leaves no training image; lower it or raise split.block_size")
    return split


def _split_items(n: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Random split of n items; each split gets at least one item when there are at least
    three, so tiny data sets still run the whole pipeline."""
    train, val, test = fractions
    n_test, n_val = int(round(test * n)), int(round(val * n))
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
    return labels


def _split_groups(groups: pd.Series, fractions: tuple[float, float, float], seed: int,
                  group_by: str = "source", what: str = "sources") -> np.ndarray:
    """Whole groups per split: groups in seeded random order each go to the split furthest
    below its target image count; val and test get at least one group if their fraction > 0.
    Errors name the config key 'split.group_by' and ``what`` the groups are."""
    sizes = groups.value_counts().sort_index()
    wanted = [split for split, fraction in zip(SPLITS, fractions) if fraction > 0]
    if len(sizes) < len(wanted):
        raise ValueError(f"config key 'split.group_by' = {group_by!r} needs at least {len(wanted)} "
                         f"{what} for non-empty {'/'.join(wanted)} splits, found {len(sizes)}: "
                         f"{', '.join(map(str, sizes.index))}")
    order = sizes.index[np.random.default_rng(seed).permutation(len(sizes))]
    targets = {split: fraction * sizes.sum() for split, fraction in zip(SPLITS, fractions)}
    counts = dict.fromkeys(SPLITS, 0)
    assigned: dict[str, str] = {}
    # Seed val and test with one group each (the smallest, so train keeps most data).
    for split in [s for s in ("test", "val") if s in wanted]:
        group = min((g for g in order if g not in assigned), key=lambda g: (sizes[g], list(order).index(g)))
        assigned[group], counts[split] = split, counts[split] + sizes[group]
    for group in order:
        if group in assigned:
            continue
        split = max(wanted, key=lambda s: (targets[s] - counts[s]) / max(targets[s], 1e-9))
        assigned[group], counts[split] = split, counts[split] + sizes[group]
    if "train" in wanted and counts["train"] == 0:
        raise ValueError(f"config key 'split.group_by' = {group_by!r} left no {what} for "
                         "training; add data or lower split.val/test")
    return groups.map(assigned).to_numpy(dtype=object)


def read_split(path: str | Path, split: str) -> pd.DataFrame:
    """Rows of one split from the split CSV, the single source of truth for later rules."""
    table = pd.read_csv(path)
    missing = {"id", "path", "mask", "source", "split"} - set(table.columns)
    if missing:
        raise DataFileError(f"{path}: split file lacks columns {sorted(missing)}")
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise DataFileError(f"{path}: the '{split}' split is empty")
    return rows


def random_crop(arrays: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` x ``size`` window of each array; smaller arrays are padded
    first (reflection for the first array, the image; zeros for the others: masks, and valid
    maps, where padding counts as unlabelled)."""
    height, width = arrays[0].shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        arrays = [np.pad(a, pads, mode="reflect" if i == 0 else "constant") for i, a in enumerate(arrays)]
        height, width = arrays[0].shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return [a[top:top + size, left:left + size] for a in arrays]


def ground_truth_instances(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Instance labels (int32, 0 = background and unlabelled) of a mask for object metrics.

    CEM-MitoLab masks hold one id per mitochondrion. A mask whose labelled non-zero pixels
    all hold one value (0/1, 0/255, ...) is binary: it holds no instances, so its
    8-connected components stand in for them (touching objects become one). The index's
    instance count (emkt.indexing) comes from here too.
    """
    labels = np.where(valid > 0, labels, 0)
    if labels.max(initial=0) > np.iinfo(np.int32).max:  # ids are arbitrary: keep them apart in int32
        from skimage.segmentation import relabel_sequential
        labels = relabel_sequential(labels)[0]
    foreground = labels[labels > 0]
    if foreground.size == 0 or foreground.min() == foreground.max():
        labels = ndimage.label(labels > 0, structure=np.ones((3, 3), dtype=int))[0]
    return labels.astype(np.int32)


def count_instances(instances: np.ndarray) -> int:
    """Objects in an instance label image (ids need not be consecutive)."""
    return int(np.unique(instances[instances > 0]).size)


def whole_image_item(name: str, source: str, image: np.ndarray, labels: np.ndarray,
                     ignore_label: int | None) -> dict:
    """One image to validate or test on: name, source, the normalised image, its binary mask,
    valid map (uint8 {0, 1}; pixels labelled ``ignore_label`` are neither valid nor
    foreground) and ground-truth instances."""
    mask, valid = masks_from_labels(labels, ignore_label)
    return {"name": name, "source": source, "image": normalise_image(image), "mask": mask, "valid": valid,
            "instances": ground_truth_instances(labels, valid)}


def load_whole_images(table: pd.DataFrame, store, ignore_label: int | None = None) -> list[dict]:
    """Whole images of a split (``whole_image_item``), from the labelled store by the split's ids."""
    return [whole_image_item(f"{row.source}/{Path(row.path).name}", row.source, store.image(row.id),
                             store.labels(row.id), ignore_label)
            for row in table.itertuples()]


def load_folder_images(index: pd.DataFrame, ignore_label: int | None = None) -> list[dict]:
    """Whole images (``whole_image_item``) read from the files an index lists (``path``,
    ``mask``, ``source``: emkt.indexing.build_index), converted as the store converts them;
    how external labelled sets are read, without packing them.

    Rows with a ``section`` (emkt.indexing.build_volume_index) are sections of the image and
    label volumes at ``path`` and ``mask``: their items, named <source>/<section>, also hold
    ``volume`` (the source), ``section`` and, for instance-labelled volumes, ``labels_3d``
    (the labels of the labelled pixels, whose ids are objects across sections), for the
    object metrics of the volume (emkt.evaluate.volume_instance_scores)."""
    if "section" in index.columns and index["section"].notna().any():
        return _load_volume_sections(index, ignore_label)
    items = []
    for row in index.itertuples():
        image, _ = to_grey_uint8(read_tiff(row.path), row.path)
        labels = to_labels(read_tiff(row.mask, palette=False), row.mask)
        if labels.shape != image.shape:
            raise DataFileError(f"{row.mask}: mask shape {labels.shape} differs from its image's {image.shape}")
        items.append(whole_image_item(f"{row.source}/{Path(row.path).name}", row.source, image, labels, ignore_label))
    return items


def _load_volume_sections(index: pd.DataFrame, ignore_label: int | None) -> list[dict]:
    """``load_folder_images`` of sections of labelled volumes, each volume opened once."""
    from .volumes import open_volume  # zarr and ome-zarr: only volumes need them

    items = []
    for (path, mask), rows in index.groupby(["path", "mask"], sort=False):
        with open_volume(path) as image, open_volume(mask) as labels:
            volume_items = []
            for row in rows.itertuples():
                z = int(row.section)
                section_labels = labels.labels(z)
                item = whole_image_item(f"{row.source}/{z}", row.source, image.section(z), section_labels,
                                        ignore_label)
                item.update(volume=row.source, section=z, labels_3d=np.where(item["valid"] > 0, section_labels, 0))
                volume_items.append(item)
        ids = np.unique(np.concatenate([np.unique(item["labels_3d"]) for item in volume_items]))
        for item in volume_items:
            if ids[ids > 0].size <= 1:  # a binary label volume: its objects come from linking sections
                del item["labels_3d"]
        items += volume_items
    return items
