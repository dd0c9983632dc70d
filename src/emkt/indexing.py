"""Every input file accounted for: the index of usable images and the list of excluded files.

``build_index`` reads every image and mask once and returns two tables:

- index (``results/data/index.csv``): one row per usable labelled image or pool image, with
  its size, original dtype, the conversion applied (RGB to grey, rescaling to 8 bits),
  foreground fraction and instance count (labelled only), a status (``ok``/``converted``),
  and the pixel hash and near-duplicate fingerprint of the converted image (emkt.screening).
  With an ignore label (config key data.ignore_label) the foreground fraction is over the
  labelled pixels (NaN if none) and the ignore value is not an instance.
- excluded (``results/data/excluded.csv``): one row per unusable file with a reason code
  from ``REASONS`` and a human-readable detail.

``check_exclusions`` then fails the run, naming the first bad files, when a set lost more
than the allowed fraction of its files.

``build_volume_index`` indexes a labelled volume (an external set given as image and labels
volumes, emkt.volumes) the same way, one row per section, with a ``section`` column; the
external sets' reader (emkt.data.load_folder_images) reads such rows from the volumes.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .data import (TIFF_SUFFIXES, ConversionError, DataFileError, count_instances, find_labelled_root,
                   ground_truth_instances, masks_from_labels, printable, read_tiff, to_grey_uint8, to_labels)
from .parallel import ordered_map
from .screening import fingerprint, format_fingerprint, pixel_hash

REASONS = {
    "empty_file": "the file has 0 bytes",
    "unreadable": "unreadable or truncated TIFF",
    "not_2d": "a 3D stack or otherwise not a 2D image",
    "non_finite": "NaN or infinite pixel values",
    "not_labels": "mask values are not non-negative whole numbers",
    "missing_mask": "image without a mask of the same name",
    "mask_without_image": "mask without an image of the same name",
    "shape_mismatch": "image and mask shapes differ",
    "too_many_labels": "a mask with more than 65535 distinct labels (the store keeps uint16 labels)",
    "bad_name": "a file name that is not valid UTF-8 (rename the file)",
}
MAX_LABELS = np.iinfo(np.uint16).max
INDEX_COLUMNS = ["id", "set", "path", "mask", "source", "height", "width", "dtype", "conversion",
                 "foreground_fraction", "n_instances", "status", "pixel_hash", "fingerprint"]
EXCLUDED_COLUMNS = ["set", "path", "reason", "detail"]


class TooManyExcluded(DataFileError):
    """More files than allowed (config key data.max_excluded_fraction) are unusable."""


def _is_tiff(name: str) -> bool:
    return name.lower().endswith(TIFF_SUFFIXES) and not name.startswith(".")


def _tiffs_by_stem(folder: Path) -> dict[str, Path]:
    """TIFF files by stem; a folder named like a TIFF is not a file and is left out."""
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if _is_tiff(entry.name) and entry.is_file())
    return {Path(name).stem: folder / name for name in names}


def find_labelled_pairs(root: str | Path) -> tuple[list[tuple[str, str, str]], list[tuple]]:
    """(source, image, mask) pairs under ``<root>/<source>/{images,masks}``, matched by file
    stem, and the exclusions for images without masks and masks without images."""
    root = find_labelled_root(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: labelled data folder not found")
    pairs, orphans = [], []
    for source in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images, masks = _tiffs_by_stem(source / "images"), _tiffs_by_stem(source / "masks")
        for stem, image in images.items():
            if stem in masks:
                pairs.append((source.name, str(image), str(masks[stem])))
            else:
                orphans.append(("labelled", printable(image), "missing_mask",
                                printable(f"no {source.name}/masks/{stem}.tif(f)")))
        for stem in sorted(set(masks) - set(images)):
            orphans.append(("labelled", printable(masks[stem]), "mask_without_image",
                            printable(f"no {source.name}/images/{stem}.tif(f)")))
    if not pairs and not orphans:
        raise DataFileError(f"{root}: no <source>/images/*.tif(f) found")
    return pairs, orphans


def find_pool_images(root: str | Path) -> list[tuple[str, str]]:
    """(source, path) of every TIFF under ``root`` (recursively, sorted); the source is the
    first sub-folder. Walks with os.scandir, which stays fast for millions of files."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: unlabelled data folder not found")
    # An archive may wrap the tree in one top folder (cem1.5m/...): sources are below it.
    while True:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = Path(entries[0].path)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(folder).relative_to(root).parts
        source = relative[0] if relative else ""
        found.extend((source, os.path.join(folder, name)) for name in sorted(files) if _is_tiff(name))
    if not found:
        raise DataFileError(f"{root}: no TIFF images found")
    return found


def _load(path: str, as_mask: bool) -> tuple[np.ndarray, str, str]:
    """(array, original dtype, conversion); raises ConversionError with a reason code."""
    if printable(path) != path:  # index.csv is UTF-8, and later rules open the files by its paths
        raise ConversionError(f"{printable(path)}: file name is not valid UTF-8", "bad_name")
    if os.path.getsize(path) == 0:
        raise ConversionError(f"{path}: empty file", "empty_file")
    try:
        raw = read_tiff(path, palette=not as_mask)
    except DataFileError as error:
        raise ConversionError(str(error), "unreadable") from None
    if as_mask:
        labels = to_labels(raw, path)
        if labels.max(initial=0) > MAX_LABELS and np.unique(labels[labels > 0]).size > MAX_LABELS:
            raise ConversionError(f"{path}: more than {MAX_LABELS} distinct labels", "too_many_labels")
        return labels, str(raw.dtype), ""
    image, conversion = to_grey_uint8(raw, path)
    return image, str(raw.dtype), conversion


def _label_statistics(labels: np.ndarray, ignore_label: int | None) -> tuple[float, int]:
    """(foreground fraction of the labelled pixels, number of instances) of a label image;
    pixels labelled ``ignore_label`` are neither counted nor an instance, and a binary mask's
    instances are its connected components (emkt.data.ground_truth_instances)."""
    mask, valid = masks_from_labels(labels, ignore_label)
    labelled = int(valid.sum())
    # the object metrics' instances, so a binary 0/255 mask counts its components here too
    n_instances = count_instances(ground_truth_instances(labels, valid))
    return (float(mask.sum() / labelled) if labelled else float("nan")), n_instances


def _signatures(image: np.ndarray) -> tuple[str, str]:
    """(pixel_hash, fingerprint) of the converted image, for emkt.screening's leak check."""
    return pixel_hash(image), format_fingerprint(fingerprint(image))


def inspect_labelled(pair: tuple[str, str, str], ignore_label: int | None = None) -> tuple[str, tuple]:
    """('ok', index fields) or ('excluded', (path, reason, detail)) for one image-mask pair."""
    source, image_path, mask_path = pair
    try:
        image, dtype, conversion = _load(image_path, as_mask=False)
    except ConversionError as error:
        return "excluded", (printable(image_path), error.reason, str(error))
    try:
        labels = _load(mask_path, as_mask=True)[0]
    except ConversionError as error:
        return "excluded", (printable(mask_path), error.reason, f"mask of {printable(image_path)}: {error}")
    if image.shape != labels.shape:
        return "excluded", (image_path, "shape_mismatch",
                            f"image {image.shape} but mask {labels.shape} ({mask_path})")
    foreground, n_instances = _label_statistics(labels, ignore_label)
    return "ok", (image_path, mask_path, source, image.shape[0], image.shape[1], dtype, conversion,
                  foreground, n_instances, "converted" if conversion else "ok", *_signatures(image))


def inspect_pool(item: tuple[str, str]) -> tuple[str, tuple]:
    """('ok', index fields) or ('excluded', (path, reason, detail)) for one pool image."""
    source, path = item
    try:
        image, dtype, conversion = _load(path, as_mask=False)
    except ConversionError as error:
        return "excluded", (printable(path), error.reason, str(error))
    return "ok", (path, "", source, image.shape[0], image.shape[1], dtype, conversion,
                  np.nan, np.nan, "converted" if conversion else "ok", *_signatures(image))


def build_index(labelled_root: str | Path | None, pool_root: str | Path | None, processes: int = 1,
                ignore_label: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every labelled pair and pool image once; return (index, excluded).
    ``ignore_label``: the mask value of unlabelled pixels (None: every pixel is labelled)."""
    rows, excluded = [], []
    if labelled_root is not None:
        pairs, orphans = find_labelled_pairs(labelled_root)
        excluded.extend(orphans)
        inspect = partial(inspect_labelled, ignore_label=ignore_label)
        for outcome, fields in ordered_map(inspect, pairs, processes, len(pairs), "index labelled"):
            (rows if outcome == "ok" else excluded).append(("labelled", *fields))
    if pool_root is not None:
        pool = find_pool_images(pool_root)
        for outcome, fields in ordered_map(inspect_pool, pool, processes, len(pool), "index pool"):
            (rows if outcome == "ok" else excluded).append(("unlabelled", *fields))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS[1:])
    index.insert(0, "id", np.arange(len(index)))
    return index, pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)


def build_volume_index(image_path: str | Path, labels_path: str | Path, ignore_label: int | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, excluded) of a labelled volume: one row per section, as ``build_index`` gives one
    per image (source: the image volume's name; path and mask: the two volumes; section: z),
    read a section at a time. Sections that cannot be used (non-finite pixels, labels that are
    not whole numbers) are excluded with their reason; volumes of different shapes or a file
    that is not a volume raise DataFileError naming both files."""
    from .volumes import open_volume, volume_stem  # zarr and ome-zarr: only volumes need them

    image_path, labels_path = Path(image_path), Path(labels_path)
    source = volume_stem(image_path)
    rows, excluded = [], []
    with open_volume(image_path) as image, open_volume(labels_path) as labels:
        if image.shape != labels.shape:
            raise DataFileError(f"{image_path} has shape {image.shape} but its labels {labels_path} have shape "
                                f"{labels.shape}; they must match")
        for z in tqdm(range(image.shape[0]), desc=f"index {source}", unit="section", mininterval=10):
            where = f"{printable(image_path)} section {z}"
            try:
                raw = image.rows(z)
                section, conversion = to_grey_uint8(raw, where)
                label = labels.labels(z)
                if label.max(initial=0) > MAX_LABELS and np.unique(label[label > 0]).size > MAX_LABELS:
                    raise ConversionError(f"{labels_path} section {z}: more than {MAX_LABELS} distinct labels",
                                          "too_many_labels")
            except ConversionError as error:
                excluded.append(("labelled", where, error.reason, str(error)))
                continue
            foreground, n_instances = _label_statistics(label, ignore_label)
            rows.append(("labelled", str(image_path), str(labels_path), source, section.shape[0], section.shape[1],
                         str(raw.dtype), conversion, foreground, n_instances, "converted" if conversion else "ok",
                         *_signatures(section), z))
    index = pd.DataFrame(rows, columns=[*INDEX_COLUMNS[1:], "section"])
    index.insert(0, "id", np.arange(len(index)))
    return index, pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)


def exclusion_summary(index: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame:
    """Per set: usable, excluded, and the excluded fraction of all files found."""
    sets = sorted(set(index["set"]) | set(excluded["set"]))
    usable = index["set"].value_counts().reindex(sets, fill_value=0)
    bad = excluded["set"].value_counts().reindex(sets, fill_value=0)
    return pd.DataFrame({"usable": usable, "excluded": bad, "fraction": bad / (usable + bad)})


def check_exclusions(index: pd.DataFrame, excluded: pd.DataFrame, max_fraction: float,
                     report: str | Path, shown: int = 10) -> pd.DataFrame:
    """Raise TooManyExcluded, naming the first bad files, when a set's excluded fraction
    exceeds ``max_fraction``; otherwise return the per-set summary."""
    summary = exclusion_summary(index, excluded)
    over = summary[summary["fraction"] > max_fraction]
    if over.empty:
        return summary
    parts = [f"{name}: {int(r.excluded)} of {int(r.usable + r.excluded)} files ({r.fraction:.1%})"
             for name, r in over.iterrows()]
    first = excluded[excluded["set"].isin(over.index)].head(shown)
    lines = [f"{r.path}: {r.reason} ({r.detail})" for r in first.itertuples()]
    raise TooManyExcluded(
        f"too many unusable input files, more than config key 'data.max_excluded_fraction' = {max_fraction:g}: "
        + "; ".join(parts) + ". First ones:\n  " + "\n  ".join(lines)
        + f"\nAll excluded files with reasons: {report}")
