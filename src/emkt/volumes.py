"""EM volumes, read and written section by section: multi-page TIFF stacks, Zarr arrays and
OME-Zarr images, and MRC files in; a chunked OME-Zarr image out.

A volume is (z, y, x). Readers never load it whole: a TIFF stack is read through tifffile's
Zarr store (``aszarr``: by page and strip or tile), a Zarr array by its chunks, an MRC file
by plain file reads at the offsets its memory-mapped header gives (plain reads rather than
slicing the memory map: a map's pages stay in the process's resident memory until it is
closed). ``Volume.rows`` reads rows of one section, which is what prediction in bands of
rows (emkt.bands) needs for sections too large for the memory budget.

``VolumeOutput`` is the OME-Zarr image that prediction writes (emkt.predict_volumes): the
probability as the image, and the mask, the instances of each section and optionally the
instances linked across sections (``link_sections``) as its labels, all chunked per section
in tiles, with the multiscales and image-label metadata of ome-zarr's writer so that napari
and other OME-Zarr readers open it. With a teacher (emkt.proofread) the predicted per-pixel
error is a second OME-Zarr image nested in it at ``error/``: not a label, since OME-Zarr
labels are integer segmentations and the error is a float (or uint8-coded) intensity.

No torch here.
"""

from __future__ import annotations

import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tifffile
import zarr
from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

from .bands import RowFile, number_components
from .data import MRC_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIX, DataFileError, grey_uint8, is_zarr_path, to_labels

OUTPUT_SUFFIX = ".ome.zarr"
# Output chunks: one section, in tiles of this side (4 MB of float32).
CHUNK = 1024
AXES = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
LABEL_NAMES = ("mask", "instances", "instances_3d")
ERROR_GROUP = "error"  # <name>.ome.zarr/error: the teacher's predicted error, an image of its own


@dataclass
class Volume:
    """A (z, y, x) volume to read section by section: ``array`` is indexed [z, rows] (a Zarr
    array, tifffile's Zarr view of a TIFF, or an MRC file's rows), possibly with a trailing
    RGB(A) axis; ``close`` releases the file."""

    path: Path
    array: Any
    shape: tuple[int, int, int]
    dtype: np.dtype
    close: Callable[[], None] = field(default=lambda: None)

    def rows(self, z: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Raw rows [start, stop) of section ``z`` (all rows by default)."""
        return np.asarray(self.array[z, start:stop])

    def section(self, z: int) -> np.ndarray:
        """Section ``z`` as a uint8 grey image, converted as a 2D image is (emkt.data.to_grey_uint8:
        other dtypes are rescaled from the section's min-max)."""
        return grey_uint8(self.rows(z), f"{self.path} section {z}")[0]

    def labels(self, z: int) -> np.ndarray:
        """Section ``z`` as integer labels (emkt.data.to_labels)."""
        return to_labels(self.rows(z), f"{self.path} section {z}")

    def section_rows(self, z: int) -> SectionRows:
        """Section ``z`` as an object read by rows, for emkt.bands."""
        return SectionRows(self, z)


@dataclass
class SectionRows:
    """One section of a volume read by rows (``[start:stop]``), with ``shape`` and ``dtype``:
    what emkt.bands reads a TIFF through, so a section can be predicted in bands."""

    volume: Volume
    z: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.volume.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.volume.rows(self.z, rows.start, rows.stop)


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` is a volume: a Zarr folder, an MRC file, or a TIFF whose first series
    holds more than one grey (or RGB) section. Unreadable TIFFs are not (the 2D reader then
    says why)."""
    path = Path(path)
    if is_zarr_path(path) or path.suffix.lower() in MRC_SUFFIXES:
        return True
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            spatial = [size for size, axis in zip(series.shape, series.axes) if size > 1 and axis != "S"]
    except Exception:  # unreadable or foreign: the 2D reader reports it
        return False
    return len(spatial) >= 3


@contextmanager
def open_volume(path: str | Path) -> Iterator[Volume]:
    """The volume at ``path`` (a TIFF stack, a Zarr array or OME-Zarr image, an MRC file),
    opened for reading section by section; DataFileError names the file and the reason."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if is_zarr_path(path):
        volume = _open_zarr(path)
    elif suffix in MRC_SUFFIXES:
        volume = _open_mrc(path)
    elif suffix in TIFF_SUFFIXES:
        volume = _open_tiff(path)
    else:
        raise DataFileError(f"{path}: not a volume (TIFF stack, Zarr / OME-Zarr or MRC: "
                            f"{', '.join((*TIFF_SUFFIXES, ZARR_SUFFIX, *MRC_SUFFIXES))})")
    try:
        yield volume
    finally:
        volume.close()


def _as_zyx(array: Any, path: Path, axes: Sequence[str] | None = None) -> tuple[Any, tuple[int, int, int]]:
    """``array`` indexed as (z, y, x[, rgb]): leading axes of size 1 dropped (t, c of an
    OME-Zarr image); a 2D array is one section. Other shapes are a DataFileError."""
    shape = tuple(int(n) for n in array.shape)
    rgb = bool(axes) and axes[-1] == "S" and shape[-1] in (3, 4)
    spatial = shape[:-1] if rgb else shape
    lead = 0
    while len(spatial) - lead > 3 and spatial[lead] == 1:
        lead += 1
    if len(spatial) - lead == 2:
        return _Leading(array, lead, add_z=True), (1, *spatial[lead:])
    if len(spatial) - lead != 3:
        raise DataFileError(f"{path}: expected a (z, y, x) volume, got shape {shape}")
    return (_Leading(array, lead) if lead else array), tuple(spatial[lead:])


@dataclass
class _Leading:
    """An array with ``lead`` leading axes of size 1 (indexed 0), or a 2D one given a z axis."""

    array: Any
    lead: int
    add_z: bool = False

    def __getitem__(self, key: tuple) -> np.ndarray:
        if self.add_z:
            return self.array[(0,) * self.lead + tuple(key[1:])]
        return self.array[(0,) * self.lead + tuple(key)]


def _open_tiff(path: Path) -> Volume:
    """A TIFF stack through tifffile's Zarr store: pages and strips (or tiles) read on demand."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as error:  # tifffile raises many types for truncated or foreign files
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error
    try:
        series = tif.series[0]
        if series.keyframe.photometric == tifffile.PHOTOMETRIC.PALETTE:
            raise DataFileError(f"{path}: palette (indexed-colour) TIFF stacks are not read as volumes")
        array = zarr.open_array(series.aszarr(), mode="r")
        array, shape = _as_zyx(array, path, series.axes)
    except Exception as error:
        tif.close()
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(f"{path}: unreadable TIFF ({error})") from error
    return Volume(path, array, shape, np.dtype(series.dtype), tif.close)


def _open_zarr(path: Path) -> Volume:
    """A Zarr array, or an OME-Zarr image group's full-resolution level (multiscales metadata)."""
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises several types for missing or foreign metadata
        raise DataFileError(f"{path}: not a readable Zarr array or group ({error})") from error
    axes = None
    if isinstance(node, zarr.Group):
        node, axes = _full_resolution(node, path)
    array, shape = _as_zyx(node, path)
    return Volume(path, array, shape, np.dtype(node.dtype))


def _full_resolution(group: zarr.Group, path: Path) -> tuple[zarr.Array, list[str]]:
    """The OME-Zarr image's largest level (its full resolution) and its axis names; OME-Zarr
    0.4 keeps the metadata in the group's attributes, 0.5 under 'ome'. Leading axes of size 1
    (t, c) are dropped later; more than three others are an error."""
    attributes = dict(group.attrs)
    multiscales = attributes.get("ome", attributes).get("multiscales")
    if not multiscales:
        raise DataFileError(f"{path}: a Zarr group without OME-Zarr multiscales metadata; give the path of "
                            "its image array (or of an OME-Zarr image)")
    levels = []
    for dataset in multiscales[0].get("datasets", []):
        try:
            levels.append(group[dataset["path"]])
        except (KeyError, TypeError):
            raise DataFileError(f"{path}: multiscales lists a level {dataset.get('path')!r} that is not in "
                                "the group") from None
    if not levels or not all(isinstance(level, zarr.Array) for level in levels):
        raise DataFileError(f"{path}: OME-Zarr multiscales without image arrays")
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in multiscales[0].get("axes", [])]
    return max(levels, key=lambda level: math.prod(level.shape)), axes  # first of equals: the listed order


def _open_mrc(path: Path) -> Volume:
    """An MRC file: its header read with mrcfile (memory-mapped), its sections by plain reads."""
    import mrcfile  # a few hundred ms; only MRC inputs need it

    try:
        with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
            data = mrc.data
            if data is None or not isinstance(data, np.memmap):
                raise ValueError("no image data")
            rows = RowFile.of_memmap(data, (math.prod(data.shape[:-1]), data.shape[-1]))
            shape = data.shape
    except Exception as error:  # mrcfile raises ValueError and others for foreign or truncated files
        raise DataFileError(f"{path}: unreadable MRC file ({error})") from error
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise DataFileError(f"{path}: expected a (z, y, x) volume, got shape {shape}")
    return Volume(path, _MrcRows(rows, shape[1]), tuple(shape), rows.dtype)


@dataclass
class _MrcRows:
    """An MRC file's (z, y, x) data indexed [z, rows] through its rows on disk."""

    rows: RowFile
    height: int

    def __getitem__(self, key: tuple[int, slice]) -> np.ndarray:
        z, rows = key
        start, stop, _ = rows.indices(self.height)
        return self.rows[z * self.height + start:z * self.height + stop]


def volume_stem(path: str | Path) -> str:
    """A volume's file name without its suffix (.tif, .mrc, .zarr, or both of .ome.zarr)."""
    path = Path(path)
    cut = len(OUTPUT_SUFFIX) if path.name.lower().endswith(OUTPUT_SUFFIX) else len(path.suffix)
    return path.name[:len(path.name) - cut]


def volume_output_names(relative_paths: Sequence[Path]) -> list[Path]:
    """The output of each input volume under volumes/: its relative path with its suffix
    (.tif, .mrc, .zarr, .ome.zarr) replaced by .ome.zarr, or, where that would clash, with
    .ome.zarr appended to the whole name."""
    names = [path.with_name(volume_stem(path) + OUTPUT_SUFFIX) for path in relative_paths]
    clashing = {name for name in names if names.count(name) > 1}
    return [Path("volumes") / (path.with_name(path.name + OUTPUT_SUFFIX) if name in clashing else name)
            for path, name in zip(relative_paths, names)]


# --- the OME-Zarr output ------------------------------------------------------------------------


@dataclass
class VolumeOutput:
    """The OME-Zarr image of a predicted volume: the probability at ``/0`` and the labels
    ``mask`` (uint8 0/255), ``instances`` (uint32, 1..n per section) and, when linked,
    ``instances_3d`` (uint32, 1..n over the volume), each at ``labels/<name>/0``; when a
    teacher reviewed it, the predicted error at ``error/0`` (an OME-Zarr image of its own)."""

    path: Path
    group: zarr.Group

    @property
    def probability(self) -> zarr.Array:
        return self.group["0"]

    def label(self, name: str) -> zarr.Array:
        return self.group[f"labels/{name}/0"]

    @property
    def settings(self) -> dict:
        return dict(self.group.attrs.get("emkt", {}))

    @classmethod
    def create(cls, path: Path, shape: tuple[int, int, int], probability_dtype: str, settings: dict,
               link_3d: bool) -> VolumeOutput:
        """A new, empty output (an existing one at ``path`` is removed first)."""
        if path.exists():
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w")
        _level(group, shape, probability_dtype)
        write_multiscales_metadata(group, [_dataset()], axes=AXES, name="probability")
        labels = group.create_group("labels")
        for name in LABEL_NAMES[:3 if link_3d else 2]:
            label = labels.create_group(name)
            _level(label, shape, np.uint8 if name == "mask" else np.uint32)
            write_multiscales_metadata(label, [_dataset()], axes=AXES, name=name)
            write_label_metadata(labels, name, source={"image": "../../"})
        group.attrs["emkt"] = settings
        return cls(path, group)

    @classmethod
    def open(cls, path: Path) -> VolumeOutput:
        return cls(path, zarr.open_group(str(path), mode="r+"))

    @classmethod
    def read(cls, path: Path) -> VolumeOutput:
        """A written output, read-only."""
        return cls(path, zarr.open_group(str(path), mode="r"))

    def add_instances_3d(self) -> zarr.Array:
        """The ``instances_3d`` label array, created if an earlier run did not link."""
        labels = self.group["labels"]
        if "instances_3d" not in labels:
            label = labels.create_group("instances_3d")
            _level(label, self.probability.shape, np.uint32)
            write_multiscales_metadata(label, [_dataset()], axes=AXES, name="instances_3d")
            write_label_metadata(labels, "instances_3d", source={"image": "../../"})
        return self.label("instances_3d")

    @property
    def error(self) -> zarr.Array | None:
        """The predicted error map (``error/0``), or None when no teacher reviewed the volume."""
        return self.group[f"{ERROR_GROUP}/0"] if ERROR_GROUP in self.group else None

    def add_error(self, dtype: str) -> zarr.Array:
        """The predicted error image (``dtype``: float32 or uint8, emkt.proofread.encode_error),
        created if missing: a multiscales image named predicted_error, chunked as the probability."""
        if self.error is None:
            error = self.group.create_group(ERROR_GROUP)
            _level(error, self.probability.shape, dtype)
            write_multiscales_metadata(error, [_dataset()], axes=AXES, name="predicted_error")
        return self.error

    def remove_error(self) -> None:
        """Remove an earlier run's error image (its sections would not match this run's)."""
        if ERROR_GROUP in self.group:
            del self.group[ERROR_GROUP]


def _level(group: zarr.Group, shape: tuple[int, int, int], dtype) -> zarr.Array:
    """Level 0 of an image or label: chunked per section, in tiles of at most CHUNK pixels a side."""
    chunks = (1, min(shape[1], CHUNK), min(shape[2], CHUNK))
    return group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                              dimension_names=("z", "y", "x"))


def _dataset() -> dict:
    return {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}


# --- linking the objects of adjacent sections ------------------------------------------------------


def link_sections(read: Callable[[int, int, int], np.ndarray], counts: Sequence[int], height: int,
                  rows: int) -> tuple[int, Callable[[int, int, int], np.ndarray]]:
    """3D objects from per-section instances: objects of adjacent sections that overlap (share
    at least one pixel position) are one object, transitively (a branching mitochondrion is one
    object). ``read(z, start, stop)`` gives rows [start, stop) of section z's instances (1..n,
    ``counts[z]`` = n, sections ``height`` rows high). Returns the number of 3D objects and a
    function giving rows of section z's 3D labels (uint32, 1..N over the volume, numbered in
    order of first appearance: z, then scan order).

    Two passes over the sections, each reading bands of ``rows`` rows of two sections at a
    time: the first collects the overlapping pairs, the second relabels. Beyond that, memory
    holds a few integers per object and per overlapping pair."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    edges = []
    for z in range(1, len(counts)):
        for start in range(0, height, rows):
            previous = np.asarray(read(z - 1, start, start + rows)).astype(np.int64)
            current = np.asarray(read(z, start, start + rows)).astype(np.int64)
            both = (previous > 0) & (current > 0)
            pairs = np.stack([previous[both] + offsets[z - 1], current[both] + offsets[z]], axis=1) - 1
            edges.append(np.unique(pairs, axis=0))
    edges_array = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    final = number_components(np.ones(int(offsets[-1]), np.int64), edges_array, 1)
    objects = int(final.max(initial=0))
    if objects > np.iinfo(np.uint32).max:
        raise ValueError(f"{objects} linked objects: more than uint32 labels hold")

    def labels_3d(z: int, start: int, stop: int) -> np.ndarray:
        lookup = np.zeros(int(counts[z]) + 1, dtype=np.uint32)
        lookup[1:] = final[offsets[z]:offsets[z + 1]]
        return lookup[np.asarray(read(z, start, stop))]

    return objects, labels_3d
