"""Images larger than the memory budget, read, predicted and written in horizontal bands.

Predicting an image in memory holds several float32 copies of it (the normalised input,
MONAI's output and weight maps, the probability, the labels): ``IN_MEMORY_BYTES`` per pixel.
An image over the budget is never loaded whole. Its TIFF is read by rows with plain file
reads (if compressed, after tifffile decoded it into a temporary file); a first pass over bands takes its
conversion range and histogram, so every band is converted and z-scored with the whole
image's statistics; then each band is predicted with MONAI's sliding windows and its rows
written into the uncompressed probability TIFF and a scratch mask file. Plain reads and
writes rather than memory maps: pages of a memory map stay in the process's resident memory
until it is unmapped, which for a 30,000 x 30,000 float32 map is 3.6 GB. A band holds exactly the windows that the whole image's window
grid places over its output rows (``plan_bands``), so every pixel is the same Gaussian-
weighted sum, in the same order, as in the whole-image prediction. Instances are labelled
band by band and merged across the seams (``write_mask_and_instances``).

Bounded by the budget: the image and output arrays. Not bounded: the model and the windows
of one forward pass (as for any image), and the per-object tables of the instance merge
(a few bytes per connected component of every band).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from .data import DataFileError, _squeeze_2d, apply_palette, grey_histogram, grey_uint8, grey_values

# Working memory per pixel of an image predicted whole (input, MONAI output and weights,
# probability, mask and labels: measured in benchmarks/large_image.py), and of a band.
IN_MEMORY_BYTES = 64
BAND_BYTES = 32
LABEL_BYTES = 16  # mask, int32 labels and their lookup, per pixel of a labelling band
TILE = 256  # mask and instance TIFFs of streamed images are written in zlib tiles of this side
MEGABYTE = 2**20


@dataclass(frozen=True)
class Band:
    """Input rows [start, stop) predicted together; output rows [out_start, out_stop) kept."""

    start: int
    stop: int
    out_start: int
    out_stop: int


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First rows of the sliding windows along an axis of ``size`` pixels, as MONAI places them
    (monai.data.utils.dense_patch_slices): every interval, the last one flush with the end."""
    if size <= window:
        return [0]  # MONAI pads the image to one window
    interval = max(int(window * (1 - overlap)), 1)
    count = next(d for d in range(size) if d * interval + window >= size) + 1
    return [min(d * interval, size - window) for d in range(count)]


def plan_bands(height: int, window: int, overlap: float, max_rows: int) -> list[Band]:
    """Bands of at most ``max_rows`` input rows (but at least one window more than the last
    band's) covering ``height`` rows. Each band holds consecutive whole-image windows and
    keeps the rows that no window outside it touches, so its sliding-window result on those
    rows is exactly the whole image's."""
    if height <= max(max_rows, window):
        return [Band(0, height, 0, height)]
    starts = window_starts(height, window, overlap)
    bands, out_start, last = [], 0, -1
    while out_start < height:
        first = sum(s + window <= out_start for s in starts)  # windows above end before out_start
        fits = [q for q in range(first, len(starts)) if starts[q] + window - starts[first] <= max_rows]
        last = max(fits[-1] if fits else first, last + 1)
        out_stop = starts[last + 1] if last + 1 < len(starts) else height
        bands.append(Band(starts[first], starts[last] + window, out_start, out_stop))
        out_start = out_stop
    return bands


def rows_within(budget_mb: float, width: int, bytes_per_pixel: int) -> int:
    """How many image rows of ``width`` pixels fit the budget (at least 1)."""
    return max(1, int(budget_mb * MEGABYTE // (max(width, 1) * bytes_per_pixel)))


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) of a TIFF's 2D image from its header, without reading pixels; None when
    the file is unreadable or not 2D (the whole-image reader then reports why)."""
    try:
        with tifffile.TiffFile(path) as tif:
            shape, dtype = tif.series[0].shape, tif.series[0].dtype
        return _squeeze_2d(np.broadcast_to(np.zeros((), dtype), shape), path, "image", allow_rgb=True).shape[:2]
    except Exception:  # unreadable, foreign or not 2D
        return None


@dataclass(frozen=True)
class RowFile:
    """A row-major array stored raw in a file from byte ``offset`` (a TIFF's contiguous image
    data, or a scratch file), read and written by rows with plain file I/O."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of_memmap(cls, array: np.memmap, shape: tuple[int, ...] | None = None) -> RowFile:
        """Where a memory map's data are (the map itself is not read)."""
        return cls(Path(array.filename), int(array.offset), tuple(shape or array.shape), array.dtype)

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows [start, stop) (a slice with step 1), read-only."""
        start, stop, _ = rows.indices(self.shape[0])
        with open(self.path, "rb") as file:
            file.seek(self.offset + start * self.row_bytes)
            data = file.read(max(stop - start, 0) * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, *self.shape[1:])

    def __setitem__(self, rows: slice, values: np.ndarray) -> None:
        start, stop, _ = rows.indices(self.shape[0])
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        if len(data) != (stop - start) * self.row_bytes:
            raise ValueError(f"{self.path}: {len(data)} bytes for rows {start}:{stop}")
        with open(self.path, "r+b") as file:
            file.seek(self.offset + start * self.row_bytes)
            file.write(data)

    @classmethod
    def create(cls, path: Path, shape: tuple[int, int], dtype, tiff: bool) -> RowFile:
        """A new file of zeros: an uncompressed TIFF (tifffile writes its header), or raw."""
        if tiff:
            created = tifffile.memmap(path, shape=shape, dtype=dtype)
            try:
                return cls.of_memmap(created)
            finally:
                del created
        with open(path, "wb") as file:
            file.truncate(math.prod(shape) * np.dtype(dtype).itemsize)
        return cls(path, 0, tuple(shape), np.dtype(dtype))


@dataclass
class LazyImage:
    """A TIFF image (2D or RGB(A)) to read by rows, its palette, and where it is."""

    path: Path
    array: RowFile
    colormap: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape[:2]

    def grey(self, start: int, stop: int, value_range: tuple[float, float] | None) -> np.ndarray:
        """Rows [start, stop) as uint8 grey, converted with the whole image's ``value_range``."""
        band = self.array[start:stop]
        if self.colormap is not None:
            band = apply_palette(band, self.colormap)
        return grey_uint8(band, self.path, value_range)[0]


@contextmanager
def open_lazily(path: str | Path, scratch: Path) -> Iterator[LazyImage]:
    """The first series of a TIFF to read by rows: in place when stored uncompressed and
    contiguous, else after tifffile decoded it (segment by segment, into a memory map whose
    pages the kernel may reclaim) into a temporary file under ``scratch``."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            colormap = page.colormap if page.photometric == tifffile.PHOTOMETRIC.PALETTE else None
            try:
                array = tifffile.memmap(path, mode="r")  # only to learn where the data are
            except ValueError:  # compressed or scattered: not memory-mappable
                fd, raw = tempfile.mkstemp(dir=scratch, suffix=".raw")
                os.close(fd)
                array = tif.series[0].asarray(out=raw)
            squeezed = _squeeze_2d(np.broadcast_to(np.zeros((), np.uint8), array.shape), path, "image", allow_rgb=True)
            rows = RowFile.of_memmap(array, squeezed.shape)
            del array
    except DataFileError:
        raise
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except Exception as error:  # tifffile raises many types for truncated or foreign files
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error
    yield LazyImage(path, rows, colormap)


def grey_statistics(image: LazyImage, rows: int) -> tuple[tuple[float, float] | None, np.ndarray]:
    """(value range of the grey values, or None for 8-bit images, which are not rescaled; the
    histogram of the converted uint8 image), in passes over bands of ``rows`` rows."""
    height = image.shape[0]
    value_range = None
    if image.colormap is None and image.array.dtype != np.uint8:
        low, high = math.inf, -math.inf
        for start in range(0, height, rows):
            values, _ = grey_values(image.array[start:start + rows], image.path)
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        value_range = (low, high)
    histogram = sum(grey_histogram(image.grey(start, start + rows, value_range)) for start in range(0, height, rows))
    return value_range, histogram


def write_mask_and_instances(mask: np.ndarray | RowFile, mask_path: Path, instances_path: Path, min_size: int,
                             rows: int) -> dict:
    """Write a uint8 0/255 mask (an array or a RowFile) and its instances (``label_in_bands``)
    as zlib-tiled TIFFs; returns height, width, foreground_fraction and objects."""
    height, width = mask.shape
    row, dtype, instance_bands = label_in_bands(mask, min_size, rows)

    def mask_tiles() -> Iterator[np.ndarray]:
        for start in range(0, height, TILE):
            band = np.asarray(mask[start:start + TILE])
            yield from (band[:, left:left + TILE] for left in range(0, width, TILE))

    def instance_tiles() -> Iterator[np.ndarray]:
        for _, instances in instance_bands:
            for top in range(0, instances.shape[0], TILE):
                yield from (instances[top:top + TILE, left:left + TILE] for left in range(0, width, TILE))

    tifffile.imwrite(mask_path, mask_tiles(), shape=(height, width), dtype=np.uint8, tile=(TILE, TILE),
                     compression="zlib")
    tifffile.imwrite(instances_path, instance_tiles(), shape=(height, width), dtype=dtype, tile=(TILE, TILE),
                     compression="zlib")
    return row


def label_in_bands(mask, min_size: int, rows: int) -> tuple[dict, np.dtype, Iterator[tuple[int, np.ndarray]]]:
    """The instances of a uint8 0/255 mask read in bands of ``rows`` rows (rounded to whole
    tiles) from anything sliced by rows with a ``shape`` (an array, a RowFile, a section of a
    volume): (height, width, foreground_fraction and objects; the instances' dtype, uint16 or
    uint32; an iterator of (first row, instance band)) for the caller to write band by band.

    The instances equal emkt.metrics.instances_from_probability of the whole mask: 8-connected
    components of at least ``min_size`` pixels numbered 1..n in scan order. Each band is
    labelled alone; components touching across a seam are joined (scipy's connected
    components of the graph of seam-touching band labels), and each joined component is
    numbered by its first band label, which is its first pixel in scan order.
    """
    height, width = mask.shape[:2]
    rows = max(TILE, rows // TILE * TILE)
    structure = np.ones((3, 3), dtype=int)

    def labelled(start: int) -> tuple[np.ndarray, int]:
        return ndimage.label(np.asarray(mask[start:start + rows]) > 0, structure=structure)

    # Pass 1: sizes of every band's components, and the pairs that touch across seams.
    offsets, sizes, edges, foreground, previous = [], [], [], 0, None
    for start in range(0, height, rows):
        labels, count = labelled(start)
        offset = sum(len(s) for s in sizes)  # node of band label k: offset + k - 1
        offsets.append(offset)
        band_sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes.append(band_sizes[1:])
        foreground += int(band_sizes[1:].sum())
        if previous is not None:
            edges.append(_seam_pairs(previous, np.where(labels[0] > 0, labels[0] + offset, 0)))
        previous = np.where(labels[-1] > 0, labels[-1] + offset, 0)
    node_sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    final = number_components(node_sizes, np.concatenate(edges) if edges else np.zeros((0, 2), np.int64), min_size)
    objects = int(final.max(initial=0))
    dtype = np.dtype(np.uint16 if objects <= np.iinfo(np.uint16).max else np.uint32)

    def instance_bands() -> Iterator[tuple[int, np.ndarray]]:
        # Pass 2: each band labelled again (deterministic), its labels looked up in ``final``.
        for band_index, start in enumerate(range(0, height, rows)):
            labels, count = labelled(start)
            lookup = np.zeros(count + 1, dtype=dtype)
            lookup[1:] = final[offsets[band_index]:offsets[band_index] + count]
            yield start, lookup[labels]

    row = {"height": height, "width": width, "foreground_fraction": foreground / (height * width), "objects": objects}
    return row, dtype, instance_bands()


def _seam_pairs(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """(node, node) pairs of 8-connected foreground pixels across a seam, from the node ids
    (0 = background) of the row above and the row below it."""
    pairs = []
    for shift in (-1, 0, 1):  # below[c + shift] touches above[c]
        a = above[max(0, -shift):len(above) - max(0, shift)]
        b = below[max(0, shift):len(below) - max(0, -shift)]
        touching = (a > 0) & (b > 0)
        pairs.append(np.stack([a[touching], b[touching]], axis=1) - 1)
    return np.unique(np.concatenate(pairs), axis=0)


def number_components(node_sizes: np.ndarray, edges: np.ndarray, min_size: int) -> np.ndarray:
    """Final instance id (0: dropped) of every band label (node): joined components of at least
    ``min_size`` pixels numbered 1..n in the order of their first node."""
    nodes = len(node_sizes)
    if nodes == 0:
        return np.zeros(0, dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(nodes, nodes))
    count, component = connected_components(graph, directed=False)
    component_sizes = np.bincount(component, weights=node_sizes, minlength=count)
    _, first_node = np.unique(component, return_index=True)  # components are numbered 0..count-1
    kept = np.flatnonzero(component_sizes >= max(min_size, 1))
    ids = np.zeros(count, dtype=np.int64)
    ids[kept[np.argsort(first_node[kept])]] = np.arange(1, len(kept) + 1)
    return ids[component]


@contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A temporary folder (hidden, suffix .tmp) beside the outputs for decoded inputs and the
    streamed mask; removed afterwards, also on failure."""
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".emkt-", suffix=".tmp", dir=parent) as folder:
        yield Path(folder)
