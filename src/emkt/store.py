"""The packed store: every usable image packed into a few large shard files.

Why: reading 1.6 M small TIFFs one by one costs a file open and a TIFF parse per image,
and that, not the pixels, is what limits the expansion stage. Packed shards turn each read
into one ``pread`` at a known offset.

Format (uint8 raw shards, no compression; docs/data.md says why not zarr):

- Labelled set (varied sizes, with instance masks): ``labelled/shard-NNNNN.bin`` holds, per
  image, its uint8 pixels then its uint16 instance labels, row-major; the table
  ``labelled/shard-NNNNN.csv`` gives id, height, width, byte offsets and the image's mean
  and standard deviation (so a crop is normalised like the whole image without reading it).
- Unlabelled pool: fixed ``tile`` x ``tile`` tiles in a standard ``.npy`` array
  ``pool/shard-NNNNN.npy`` of shape (n, tile, tile); tile i is at a computed offset, so the
  reader keeps no per-image table (memory does not grow with the pool). Larger images are
  cut into edge-flush tiles, smaller ones reflect-padded; ``shard-NNNNN.origin.npy`` records
  (index row, top, left) of every tile.
- ``<set>.json`` beside the two folders: format version, shard files and counts.
- Pseudo-labels of the pool (set ``pseudo``): the same layout as the pool, one uint8
  probability (p * 255) per pool pixel, so tile i of both stores is the same place.
- Soft labels of the labelled train images (ensemble distillation): ``<name>.bin`` holds,
  per image, the members' mean probability then their standard deviation, both uint8
  (mean * 255, sd * 510: an sd of probabilities is at most 0.5); ``<name>.csv`` gives id,
  height, width and the offset.

Readers open shard files lazily in each process and read with ``os.pread`` (no mmap: mapped
pages count towards a process's resident memory, which then grows over a pass over the pool).
``DataFiles`` names what a training or evaluation job reads: the split and the stores' manifests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .data import load_whole_images, read_split, read_tiff, to_grey_uint8, to_labels
from .files import atomic_path
from .parallel import ordered_map

FORMAT_VERSION = 1
SOFT_LABEL_COLUMNS = ["id", "height", "width", "offset"]
# uint8 quantisation of soft labels: probabilities in [0, 1], standard deviations in [0, 0.5].
MEAN_SCALE, SD_SCALE = 255.0, 510.0
LABELLED_COLUMNS = ["id", "height", "width", "image_offset", "mask_offset", "mean", "std"]


class StoreError(ValueError):
    """A store file is missing, of another format, or inconsistent with its manifest."""


def shard_rows(n: int, shards: int, shard: int) -> range:
    """Rows ``[start, stop)`` of shard ``shard`` of ``shards`` near-equal contiguous blocks."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    return range(shard * n // shards, (shard + 1) * n // shards)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def edge_flush_starts(length: int, size: int) -> list[int]:
    """Window starts covering ``[0, length)``; the last window ends flush with the edge."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def tile_count(height: int, width: int, tile: int) -> int:
    """Tiles cut from an image of this size (after padding to at least one tile)."""
    return len(edge_flush_starts(max(height, tile), tile)) * len(edge_flush_starts(max(width, tile), tile))


def cut_tiles(image: np.ndarray, tile: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(top, left, tile) of an image, reflect-padded (centred) when smaller than a tile."""
    pad_h, pad_w = max(0, tile - image.shape[0]), max(0, tile - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)), mode="reflect")
    for top in edge_flush_starts(image.shape[0], tile):
        for left in edge_flush_starts(image.shape[1], tile):
            yield top, left, image[top:top + tile, left:left + tile]


# ---------------------------------------------------------------- packing

def _read_labelled(paths: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    image_path, mask_path = paths
    image, _ = to_grey_uint8(read_tiff(image_path), image_path)
    labels = to_labels(read_tiff(mask_path, palette=False), mask_path)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0]
        if labels.max() > np.iinfo(np.uint16).max:
            raise StoreError(f"{mask_path}: more than 65535 instances")
    if image.shape != labels.shape:
        raise StoreError(f"{image_path}: shape {image.shape} differs from its mask's {labels.shape}; "
                         "the index should have excluded it (rerun index_data)")
    return image, labels.astype("<u2")


def _read_pool_image(path: str) -> np.ndarray:
    return to_grey_uint8(read_tiff(path), path)[0]


def pack_labelled_shard(rows: pd.DataFrame, bin_path: str | Path, table_path: str | Path,
                        processes: int = 1) -> pd.DataFrame:
    """Pack labelled rows (index columns id, path, mask) into one shard; returns its table."""
    records = []
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        pairs = zip(rows["path"].astype(str), rows["mask"].astype(str))
        for row_id, (image, labels) in zip(rows["id"], ordered_map(_read_labelled, pairs, processes, len(rows),
                                                                    f"pack {Path(bin_path).name}")):
            image_offset = out.tell()
            out.write(np.ascontiguousarray(image).tobytes())
            mask_offset = out.tell()
            out.write(np.ascontiguousarray(labels).tobytes())
            records.append({"id": int(row_id), "height": image.shape[0], "width": image.shape[1],
                            "image_offset": image_offset, "mask_offset": mask_offset,
                            "mean": float(image.mean()), "std": float(image.std())})
    table = pd.DataFrame(records, columns=LABELLED_COLUMNS)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def pack_pool_shard(rows: pd.DataFrame, tile: int, npy_path: str | Path, origin_path: str | Path,
                    processes: int = 1) -> int:
    """Cut pool rows (index columns id, path, height, width) into tiles in one .npy shard.

    The tile count is known from the index, so the array header is written first and the
    tiles streamed after it: memory stays at one image whatever the shard size.
    """
    counts = [tile_count(int(h), int(w), tile) for h, w in zip(rows["height"], rows["width"])]
    total = int(sum(counts))
    origins = np.zeros((total, 3), dtype=np.int64)
    written = 0
    with atomic_path(npy_path) as tmp, open(tmp, "wb") as out:
        header = {"descr": "|u1", "fortran_order": False, "shape": (total, tile, tile)}
        np.lib.format.write_array_header_1_0(out, header)
        images = ordered_map(_read_pool_image, rows["path"].astype(str), processes, len(rows),
                             f"pack {Path(npy_path).name}")
        for row_id, expected, image in zip(rows["id"], counts, images):
            cut = list(cut_tiles(image, tile))
            if len(cut) != expected:
                raise StoreError(f"index id {row_id}: size {image.shape} differs from the index; rerun index_data")
            for top, left, piece in cut:
                out.write(np.ascontiguousarray(piece).tobytes())
                origins[written] = (row_id, top, left)
                written += 1
    with atomic_path(origin_path) as tmp:
        with open(tmp, "wb") as out:
            np.save(out, origins)
    return total


def pack_store(rows: pd.DataFrame, store_set: str, out_dir: str | Path, shards: int, tile: int | None = None,
               processes: int = 1) -> Path:
    """Pack index rows into ``out_dir/<set>/shard-NNNNN.*`` and ``out_dir/<set>.json`` in this
    process: what the workflow's per-shard pack jobs and store_manifest do as separate jobs
    (for tests, benchmarks and notebooks). Returns the manifest."""
    out_dir, files = Path(out_dir), []
    for k in range(shards):
        part = rows.iloc[list(shard_rows(len(rows), shards, k))]
        prefix = out_dir / store_set / shard_name(k)
        if store_set == "labelled":
            pack_labelled_shard(part, prefix.with_suffix(".bin"), prefix.with_suffix(".csv"), processes)
            files.append(prefix.with_suffix(".csv"))
        else:
            pack_pool_shard(part, tile, prefix.with_suffix(".npy"), prefix.with_suffix(".origin.npy"), processes)
            files.append(prefix.with_suffix(".npy"))
    manifest = out_dir / f"{store_set}.json"
    write_manifest(store_set, files, manifest, tile=tile)
    return manifest


def write_manifest(store_set: str, shard_files: list[str | Path], manifest_path: str | Path,
                   tile: int | None = None) -> dict:
    """The store's entry point: format, shard files (relative to the manifest) and counts."""
    manifest_path = Path(manifest_path)
    shards = []
    for path in map(Path, shard_files):
        count = len(pd.read_csv(path)) if store_set == "labelled" else _npy_layout(path)[1][0]
        shards.append({"file": os.path.relpath(path, manifest_path.parent), "count": int(count)})
    manifest = {"format": FORMAT_VERSION, "set": store_set, "tile": tile, "shards": shards,
                "images": sum(s["count"] for s in shards), "emkt_version": __version__}
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------- reading

def read_manifest(path: str | Path, store_set: str) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"{path}: cannot read the store manifest ({error})") from error
    if manifest.get("format") != FORMAT_VERSION or manifest.get("set") != store_set:
        raise StoreError(f"{path}: a '{manifest.get('set')}' store of format {manifest.get('format')}, "
                         f"expected '{store_set}' format {FORMAT_VERSION}; rerun the pack rules")
    return manifest


def _npy_layout(path: Path) -> tuple[int, tuple[int, ...]]:
    """Byte offset of the data and the shape of a uint8 C-order .npy file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if dtype != np.uint8 or fortran or len(shape) != 3:
        raise StoreError(f"{path}: expected a C-order uint8 (n, tile, tile) array, got {dtype} {shape}")
    size = os.path.getsize(path)
    if size != offset + int(np.prod(shape)):
        raise StoreError(f"{path}: {size} bytes, expected {offset + int(np.prod(shape))} (truncated shard?)")
    return offset, tuple(int(s) for s in shape)


class _Files:
    """Read-only descriptors opened on first use in each process (DataLoader workers fork)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self._fds, self._pid = paths, {}, None

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return fd

    def read_into(self, shard: int, offset: int, out: np.ndarray) -> None:
        """Fill the C-contiguous array ``out`` from the shard at ``offset``: one syscall, no copy."""
        got = os.preadv(self._fd(shard), [memoryview(out).cast("B")], offset)
        if got != out.nbytes:
            raise StoreError(f"{self.paths[shard]}: short read at byte {offset} (truncated shard?)")

    def read_array(self, shard: int, offset: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        self.read_into(shard, offset, out)
        return out

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "_fds": {}, "_pid": None}

    def __del__(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)


class LabelledStore:
    """Labelled images (uint8) and instance labels (uint16) by id; the table is small (one
    row per labelled image), the pixels stay on disk."""

    def __init__(self, manifest_path: str | Path) -> None:
        manifest_path = Path(manifest_path)
        manifest = read_manifest(manifest_path, "labelled")
        tables, bins = [], []
        for number, shard in enumerate(manifest["shards"]):
            table_path = manifest_path.parent / shard["file"]
            table = pd.read_csv(table_path)
            if list(table.columns) != LABELLED_COLUMNS or len(table) != shard["count"]:
                raise StoreError(f"{table_path}: does not match the manifest {manifest_path}")
            tables.append(table.assign(shard=number))
            bins.append(table_path.with_suffix(".bin"))
        table = pd.concat(tables, ignore_index=True)
        if not table["id"].is_unique:
            raise StoreError(f"{manifest_path}: an image id appears in more than one shard")
        self.table = table
        # Plain arrays and a dict: a lookup per crop must cost microseconds, not a pandas .loc.
        self._row_of = {int(i): n for n, i in enumerate(table["id"])}
        self._cols = {c: table[c].to_numpy() for c in ("shard", "height", "width", "image_offset", "mask_offset")}
        self._stats = table[["mean", "std"]].to_numpy(dtype=np.float64)
        self._files = _Files(bins)

    def __len__(self) -> int:
        return len(self.table)

    def _read(self, image_id: int, column: str, dtype: str) -> np.ndarray:
        try:
            n = self._row_of[int(image_id)]
        except KeyError:
            raise StoreError(f"image id {image_id} is not in the labelled store") from None
        c = self._cols
        shape = (int(c["height"][n]), int(c["width"][n]))
        return self._files.read_array(int(c["shard"][n]), int(c[column][n]), shape, dtype)

    def image(self, image_id: int) -> np.ndarray:
        return self._read(image_id, "image_offset", "u1")

    def labels(self, image_id: int) -> np.ndarray:
        return self._read(image_id, "mask_offset", "<u2")

    def stats(self, image_id: int) -> tuple[float, float]:
        """Mean and standard deviation of the whole image (for per-image z-scoring of crops)."""
        mean, std = self._stats[self._row_of[int(image_id)]]
        return float(mean), float(std)


class TileStore:
    """Fixed-size pool tiles by position 0..len-1; holds only per-shard offsets, so memory
    does not depend on the pool size. ``store_set`` 'pseudo' reads the pool's pseudo-labels."""

    def __init__(self, manifest_path: str | Path, store_set: str = "pool") -> None:
        manifest_path = Path(manifest_path)
        manifest = read_manifest(manifest_path, store_set)
        self.tile = int(manifest["tile"])
        paths, offsets, counts = [], [], []
        for shard in manifest["shards"]:
            path = manifest_path.parent / shard["file"]
            offset, shape = _npy_layout(path)
            if shape[0] != shard["count"] or shape[1:] != (self.tile, self.tile):
                raise StoreError(f"{path}: shape {shape} does not match the manifest {manifest_path}")
            paths.append(path)
            offsets.append(offset)
            counts.append(shape[0])
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._ends = np.cumsum(counts, dtype=np.int64)
        self._files = _Files(paths)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, byte offset) of each tile index: the one place tile addresses are computed."""
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"tile index outside the pool of {len(self)}: {indices.min()}..{indices.max()}")
        shards = np.searchsorted(self._ends, indices, side="right")
        firsts = np.where(shards > 0, self._ends[np.maximum(shards - 1, 0)], 0)
        return shards, self._offsets[shards] + (indices - firsts) * self.tile * self.tile

    def tile_at(self, index: int) -> np.ndarray:
        (shard,), (offset,) = self._locate(np.array([index], dtype=np.int64))
        return self._files.read_array(int(shard), int(offset), (self.tile, self.tile), "u1")

    def tiles(self, indices: Sequence[int]) -> np.ndarray:
        """Tiles ``indices`` as one (n, tile, tile) array, each read straight into its slot."""
        shards, offsets = self._locate(np.asarray(indices, dtype=np.int64))
        out = np.empty((len(indices), self.tile, self.tile), dtype=np.uint8)
        # In file order: neighbouring reads help the disk's read-ahead when the cache is cold.
        for slot in np.lexsort((offsets, shards)):
            self._files.read_into(int(shards[slot]), int(offsets[slot]), out[slot])
        return out


# ---------------------------------------------------------------- soft labels

@dataclass(frozen=True)
class DataFiles:
    """What the stages read: the split CSV (the single source of truth for which image is
    in which split) and the packed stores' manifests."""

    split: str | Path
    labelled: str | Path
    pool: str | Path | None = None
    ignore_label: int | None = None

    def split_items(self, split: str) -> list[dict]:
        """Whole normalised images, masks and valid maps of one split, for validation or testing."""
        return load_whole_images(read_split(self.split, split), LabelledStore(self.labelled), self.ignore_label)


def quantise_probability(values: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * scale), 0, 255).astype(np.uint8)


def write_soft_labels(labels: Iterator[tuple[int, np.ndarray, np.ndarray]], bin_path: str | Path,
                      table_path: str | Path) -> pd.DataFrame:
    """Write (id, mean, sd) per image, streamed: memory holds one image at a time."""
    records = []
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        for image_id, mean, sd in labels:
            if mean.shape != sd.shape or mean.ndim != 2:
                raise ValueError(f"soft labels of id {image_id}: mean {mean.shape} and sd {sd.shape} must be equal 2D shapes")
            records.append({"id": int(image_id), "height": mean.shape[0], "width": mean.shape[1], "offset": out.tell()})
            out.write(quantise_probability(mean, MEAN_SCALE).tobytes())
            out.write(quantise_probability(sd, SD_SCALE).tobytes())
    table = pd.DataFrame(records, columns=SOFT_LABEL_COLUMNS)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return table


class SoftLabelStore:
    """Soft labels by labelled-image id, read from disk on demand (see write_soft_labels)."""

    def __init__(self, table_path: str | Path) -> None:
        table_path = Path(table_path)
        table = pd.read_csv(table_path)
        if list(table.columns) != SOFT_LABEL_COLUMNS:
            raise StoreError(f"{table_path}: columns {list(table.columns)}, expected {SOFT_LABEL_COLUMNS}")
        self._row_of = {int(i): n for n, i in enumerate(table["id"])}
        self._cols = {c: table[c].to_numpy() for c in SOFT_LABEL_COLUMNS}
        self._files = _Files([table_path.with_suffix(".bin")])
        self.table_path = table_path

    def _read(self, image_id: int, which: int) -> np.ndarray:
        try:
            n = self._row_of[int(image_id)]
        except KeyError:
            raise StoreError(f"{self.table_path}: no soft labels for image id {image_id}") from None
        shape = (int(self._cols["height"][n]), int(self._cols["width"][n]))
        offset = int(self._cols["offset"][n]) + which * shape[0] * shape[1]
        return self._files.read_array(0, offset, shape, "u1")

    def mean(self, image_id: int) -> np.ndarray:
        """The members' mean probability, float32 in [0, 1]."""
        return self._read(image_id, 0).astype(np.float32) / MEAN_SCALE

    def sd(self, image_id: int) -> np.ndarray:
        """The members' standard deviation, float32 in [0, 0.5]."""
        return self._read(image_id, 1).astype(np.float32) / SD_SCALE
