"""Segmenting a folder of a user's own images with a trained network (``predict_folder``, the
command ``python -m emkt predict`` and the workflow's rule predict_images): probability,
mask and instances of every image, each written atomically, and a table of what was done.

Images too large for the memory budget are read, predicted and written in bands of rows
(emkt.bands). Volumes (TIFF stacks, Zarr / OME-Zarr, MRC: emkt.volumes) are segmented
section by section into OME-Zarr images (emkt.predict_volumes). The probabilities come from
emkt.inference, as evaluation's do."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import tifffile
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from .bands import (BAND_BYTES, IN_MEMORY_BYTES, LABEL_BYTES, LazyImage, RowFile, grey_statistics, image_size, open_lazily,
                    plan_bands, rows_within, scratch_folder, write_mask_and_instances)
from .checkpoints import check_normalisation
from .data import (MRC_SUFFIXES, PREDICTION_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIX, DataFileError, find_images, find_volumes,
                   grey_histogram, histogram_moments, is_zarr_path, printable, read_tiff, to_grey_uint8, zscore)
from .files import atomic_path
from .inference import predict_tiles
from .metrics import instances_from_probability
from .proofread import PROOFREAD_FOLDERS, Proofreader, review_resumed
from .store import quantise_probability
from .volumes import is_volume, volume_output_names

log = logging.getLogger("emkt")


OUTPUT_FOLDERS = ("probability", "mask", "instances")
VOLUME_FOLDER = "volumes"  # <output>/volumes/<name>.ome.zarr and <name>.sections.csv
PROBABILITY_FORMATS = ("float32", "uint8")
# Images waiting for others of their shape hold at most this many pixels (64 MB as uint8),
# and one sliding-window call gets at most this many: batching is for many small images,
# a large image fills the accelerator on its own.
MAX_BATCH_PIXELS = 2**24
# Working memory for the image arrays of one sliding-window call (--memory-mb): above it an
# image is predicted in bands (emkt.bands). The model and runtime come on top.
DEFAULT_MEMORY_MB = 4096
T = TypeVar("T")


@dataclass(frozen=True)
class PredictionSummary:
    """What ``predict_folder`` did: images (and volumes) predicted now, files skipped as
    unreadable, images whose outputs an earlier run left (``resume``), and the throughput of
    the predicted ones; ``sections``: the sections of volumes predicted now."""

    images: int
    skipped: int
    resumed: int
    megapixels: float
    seconds: float
    images_per_s: float
    megapixels_per_s: float
    device: str
    sections: int = 0

    def __str__(self) -> str:
        text = (f"{self.images} images ({self.megapixels:.1f} Mpx) in {self.seconds:.1f} s: "
                f"{self.images_per_s:.2f} images/s, {self.megapixels_per_s:.2f} Mpx/s on {self.device}")
        extra = [f"{n} {what}" for n, what in ((self.sections, "volume sections"), (self.resumed, "resumed"),
                                                (self.skipped, "skipped")) if n]
        return text + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class _Job:
    """One input file: where it is, its output name (relative, .tiff; for a volume
    volumes/<name>.ome.zarr), whether it is a volume and, once read, its pixels."""

    source: Path
    name: Path
    image: np.ndarray | None = None
    volume: bool = False


def exact_zscore(image: np.ndarray) -> np.ndarray:
    """The per-image z-score of a uint8 image with float64 statistics from its histogram: what
    a band of an image too large for memory gets too (emkt.bands), so both agree exactly."""
    return zscore(image, *histogram_moments(grey_histogram(image)))


def read_any_image(path: str | Path) -> np.ndarray:
    """A 2D uint8 grey image from a TIFF, PNG or JPEG file, converted as training data is
    (emkt.data.to_grey_uint8); unreadable or non-2D files raise DataFileError."""
    path = Path(path)
    array = read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _read_with_pillow(path)
    image, _ = to_grey_uint8(array, path)
    return image


def _read_with_pillow(path: Path) -> np.ndarray:
    """The pixels of an image Pillow reads; palette and two-channel modes become RGB first, so
    that to_grey_uint8 sees grey values rather than palette indices."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("1", "L", "RGB", "RGBA", "F") and not image.mode.startswith("I"):
                image = image.convert("RGB")
            return np.asarray(image)
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except Exception as error:  # Pillow raises several types for truncated, foreign or huge files
        raise DataFileError(f"{path}: unreadable image ({error})") from error


def postprocess(prob: np.ndarray, threshold: float, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask, instances) of a probability map: the mask is uint8 255 where ``prob >= threshold``
    (0 elsewhere); instances are its 8-connected components of at least ``min_size`` pixels,
    numbered 1..n (uint16, or uint32 beyond 65535 objects)."""
    instances = instances_from_probability(prob, threshold, min_size)
    mask = np.where(np.asarray(prob) >= threshold, 255, 0).astype(np.uint8)
    dtype = np.uint16 if instances.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    return mask, instances.astype(dtype)


def encode_probability(prob: np.ndarray, probability: str) -> np.ndarray:
    """float32 in [0, 1], or uint8 round(p * 255) (a quarter of the size, the pool's pseudo-label scale)."""
    if probability == "uint8":
        return quantise_probability(prob, 255.0)
    return np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)


def decode_probability(written: np.ndarray) -> np.ndarray:
    """A written probability map as float32 p: a uint8 map (``encode_probability``) read as p = v/255."""
    written = np.asarray(written)
    return written.astype(np.float32) / 255.0 if written.dtype == np.uint8 else written.astype(np.float32)


def output_paths(output_dir: str | Path, name: str | Path) -> dict[str, Path]:
    """Where the probability, mask and instances of an image named ``name`` (relative, .tiff) go."""
    return {folder: Path(output_dir) / folder / name for folder in OUTPUT_FOLDERS}


def batches_by_shape(items: Iterable[T], shape: Callable[[T], tuple[int, ...]], batch_size: int,
                     max_pixels: int = MAX_BATCH_PIXELS) -> Iterator[list[T]]:
    """Lists of same-shaped items, each at most ``batch_size`` items and ``max_pixels`` pixels
    (but at least one item), streamed: items wait for others of their shape only while all
    waiting items hold at most ``max_pixels`` pixels, so memory stays bounded."""
    waiting: dict[tuple[int, ...], list[T]] = {}
    for item in items:
        key = tuple(shape(item))
        group = waiting.setdefault(key, [])
        group.append(item)
        if len(group) >= batch_size or (len(group) + 1) * math.prod(key) > max_pixels:
            yield waiting.pop(key)
        while sum(len(g) * math.prod(k) for k, g in waiting.items()) > max_pixels:
            # Over budget: send the group holding the most pixels rather than wait longer.
            yield waiting.pop(max(waiting, key=lambda k: len(waiting[k]) * math.prod(k)))
    yield from waiting.values()


def predict_folder(model: nn.Module, checkpoint: dict, input_dir: str | Path, output_dir: str | Path, *,
                   threshold: float = 0.5, min_size: int = 32, overlap: float = 0.25, batch_size: int = 16,
                   device: torch.device | str = "cpu", probability: str = "float32", recursive: bool = False,
                   resume: bool = False, memory_mb: float = DEFAULT_MEMORY_MB, link_3d: bool = False,
                   teacher: nn.Module | None = None, review_figure: int = 0) -> PredictionSummary:
    """Segment every image of ``input_dir`` with ``model`` (from ``checkpoint``, as load_model returns).

    Writes, per image (its path relative to ``input_dir``, suffix .tiff: ``output_names``), the probability
    (``probability``: float32 or uint8 p*255), the binary mask (uint8 0/255, ``prob >= threshold``)
    and the instances (8-connected components of at least ``min_size`` pixels) under
    ``output_dir``/probability, /mask and /instances, each atomically; and ``predictions.csv``,
    one row per input file. Unreadable files are skipped with a warning and listed there;
    ``resume`` keeps images whose three outputs exist. Returns (and logs) the throughput.

    ``memory_mb`` bounds the image arrays in memory: images (and batches) whose estimate
    (emkt.bands.IN_MEMORY_BYTES per pixel) exceeds it are TIFFs read, predicted and written in
    bands of rows (emkt.bands), with the same result; larger PNG/JPEG files are skipped.
    Every image is z-scored with exact float64 statistics (``exact_zscore``).

    ``input_dir`` may also name one image or volume. Volumes (TIFF stacks, Zarr / OME-Zarr, MRC:
    emkt.volumes) are segmented section by section
    into ``output_dir``/volumes/<name>.ome.zarr, with a per-section table <name>.sections.csv
    beside it (emkt.predict_volumes.predict_volume; ``link_3d`` adds objects linked across
    sections); they get one row each, and the table the columns sections and objects_3d.
    With a ``teacher`` (a loss-predicting teacher of the student's input size and
    normalisation: emkt.proofread.check_teacher) each image also gets its predicted loss
    (predictions.csv ``predicted_loss``), an error-map teacher's map goes to ``output_dir``/error/,
    and ``review_queue.csv`` lists images (and objects) from most to least likely wrong;
    ``review_figure`` > 0 draws that many of the worst images into review/worst_images.png
    (emkt.proofread.Proofreader). A volume is reviewed section by section (its row's
    ``predicted_loss`` is the mean over sections; emkt.predict_volumes). Images and volume
    sections predicted in bands get no teacher review (a warning says so).
    """
    from .predict_volumes import predict_volume  # it builds on this module's helpers

    _check_settings(threshold, min_size, overlap, batch_size, probability)
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    check_normalisation(checkpoint)  # inputs are z-scored per image, as in training
    if review_figure and teacher is None:
        raise ValueError("a review figure needs a teacher (--teacher) to rank the images")
    reviewer = None if teacher is None else Proofreader(
        teacher, checkpoint["input_size"], overlap=overlap, batch_size=batch_size, device=device, threshold=threshold,
        min_size=min_size, probability=probability)
    input_dir, output_dir, device = Path(input_dir), Path(output_dir), torch.device(device)
    jobs, rows, root = _plan_jobs(input_dir, output_dir, recursive)
    model = model.to(device).eval()
    pixels: list[int] = []  # of each image predicted now (the images themselves are not kept)
    start = time.perf_counter()
    with tqdm(total=len(jobs) + len(rows), desc="predict", unit="image") as progress, torch.inference_mode():
        def record(job: _Job, row: dict) -> None:
            rows[job.source] = {"file": printable(job.source.relative_to(root).as_posix()),
                                "output": printable(job.name.as_posix()), **row}
            progress.update()

        budget_pixels = int(memory_mb * 2**20 // IN_MEMORY_BYTES)
        volumes = [job for job in jobs if job.volume]
        todo = [job for job in jobs if not job.volume and not (resume and _resumed(job, output_dir, record, budget_pixels))]
        if reviewer is not None:  # the teacher judges resumed images again, from their written probabilities
            for job in (job for job in jobs if rows.get(job.source, {}).get("status") == "resumed"):
                rows[job.source].update(review_resumed(reviewer, job.source, job.name, rows[job.source]["file"],
                                                       output_dir, budget_pixels))
        sizes = {job.source: _header_size(job.source) for job in todo}  # None: the reader says why
        large = {path: size for path, size in sizes.items() if size and size[0] * size[1] > budget_pixels}
        readable = _read_jobs([job for job in todo if job.source not in large], record)
        for batch in batches_by_shape(readable, lambda job: job.image.shape, batch_size,
                                      max(1, min(MAX_BATCH_PIXELS, budget_pixels))):
            probs = predict_tiles(model, np.stack([job.image for job in batch]), checkpoint["input_size"],
                                  overlap, batch_size, device, exact_zscore)
            for job, prob in zip(batch, probs):
                row = _write_outputs(output_dir, job.name, prob, threshold, min_size, probability)
                if reviewer is not None:
                    row.update(reviewer.review(output_dir, job.name, exact_zscore(job.image), prob,
                                               file=printable(job.source.relative_to(root).as_posix()),
                                               source=job.source))
                record(job, row)
                pixels.append(prob.size)
        for job in (job for job in todo if job.source in large):
            height, width = large[job.source]
            if job.source.suffix.lower() not in TIFF_SUFFIXES:
                _skip(job, record, f"{height} x {width} pixels need more than the memory budget of {memory_mb:g} MB "
                                   "and only TIFF images are read in bands (convert it to an uncompressed TIFF)")
                continue
            try:
                row = _predict_in_bands(model, job, output_dir, checkpoint["input_size"], memory_mb, threshold=threshold,
                                        min_size=min_size, overlap=overlap, batch_size=batch_size, device=device,
                                        probability=probability)
            except DataFileError as error:
                _skip(job, record, _reason(error, job.source))
                continue
            if reviewer is not None:
                log.warning("%s: predicted in bands, so not reviewed by the teacher", printable(job.source))
                row["predicted_loss"] = float("nan")
            record(job, row)
            pixels.append(height * width)
        sections = 0
        for job in volumes:
            try:
                row = predict_volume(model, checkpoint, job.source, output_dir / job.name, threshold=threshold,
                                     min_size=min_size, overlap=overlap, batch_size=batch_size, device=device,
                                     probability=probability, memory_mb=memory_mb, resume=resume, link_3d=link_3d,
                                     reviewer=reviewer, names=(printable(job.source.relative_to(root).as_posix()),
                                                               printable(job.name.as_posix())))
            except DataFileError as error:
                _skip(job, record, _reason(error, job.source))
                continue
            predicted = row.pop("pixels")
            record(job, row)
            if predicted:
                pixels.append(predicted)
                sections += predicted // (row["height"] * row["width"])
    summary = _summary(pixels, rows, time.perf_counter() - start, device, sections)
    _write_table(rows, output_dir / "predictions.csv", volumes=bool(volumes))
    if reviewer is not None:
        reviewer.write_queue(output_dir / "review_queue.csv")
        if review_figure:
            reviewer.write_figure(output_dir, review_figure, output_dir / "review" / "worst_images.png")
    if summary.images + summary.resumed == 0:
        first = next(iter(rows.values()))
        raise DataFileError(f"{input_dir}: none of its {len(rows)} image files could be read "
                            f"(e.g. {first['file']}: {first['status']}); see {output_dir / 'predictions.csv'}")
    log.info("%s", summary)
    return summary


def _check_settings(threshold: float, min_size: int, overlap: float, batch_size: int, probability: str) -> None:
    """ValueError for a setting out of range, before any work is done."""
    problems = []
    if not 0.0 <= threshold <= 1.0:
        problems.append(f"threshold must be in [0, 1], got {threshold}")
    if min_size < 0:
        problems.append(f"min_size must be >= 0 pixels, got {min_size}")
    if not 0.0 <= overlap < 1.0:
        problems.append(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {batch_size}")
    if probability not in PROBABILITY_FORMATS:
        problems.append(f"probability must be one of {PROBABILITY_FORMATS}, got {probability!r}")
    if problems:
        raise ValueError("; ".join(problems))


def _plan_jobs(input_dir: Path, output_dir: Path, recursive: bool) -> tuple[list[_Job], dict[Path, dict], Path]:
    """A job per input image and volume, named by ``output_names`` (``volume_output_names``);
    rows of skipped files for the rare names that still clash; and the folder the names are
    relative to: ``input_dir``, or its parent when it names one image or volume itself. The
    output folders are not inputs, so a recursive run with its output inside its input does
    not segment its own results."""
    if input_dir.is_file() or is_zarr_path(input_dir) and input_dir.is_dir():  # one image or volume
        return *_plan_jobs_of(input_dir.parent, [input_dir]), input_dir.parent
    if not input_dir.is_dir():
        raise DataFileError(f"{input_dir}: input folder not found")
    outputs = [(output_dir / folder).resolve() for folder in (*OUTPUT_FOLDERS, *PROOFREAD_FOLDERS, VOLUME_FOLDER)]
    found = [p for p in find_images(input_dir, recursive) + find_volumes(input_dir, recursive)
             if not any(p.resolve().is_relative_to(folder) for folder in outputs)
             and not any(is_zarr_path(parent) for parent in p.relative_to(input_dir).parents)]  # a Zarr's own files
    if not found:
        where = "in its tree" if recursive else "in it (sub-folders not searched)"
        raise DataFileError(f"{input_dir}: no image files ({', '.join(PREDICTION_SUFFIXES)}) or volumes "
                            f"({', '.join((ZARR_SUFFIX, *MRC_SUFFIXES))}) {where}")
    return *_plan_jobs_of(input_dir, found), input_dir


def _plan_jobs_of(input_dir: Path, found: list[Path]) -> tuple[list[_Job], dict[Path, dict]]:
    """Jobs of the images and volumes ``found`` under ``input_dir``, named by ``output_names``
    and ``volume_output_names``, and rows of skipped files for names that clash."""
    volume = {p: is_volume(p) for p in found}
    files = sorted(found, key=lambda p: (volume[p], p))
    images, volumes = [p for p in files if not volume[p]], [p for p in files if volume[p]]
    names = (output_names([p.relative_to(input_dir) for p in images])
             + volume_output_names([p.relative_to(input_dir) for p in volumes]))
    jobs, rows, owners = [], {}, {}
    for path, name in zip(images + volumes, names):
        if name in owners:
            reason = f"output name {name.as_posix()} taken by {owners[name].as_posix()}"
            log.warning("skipped %s: %s", path, reason)
            rows[path] = {"file": path.relative_to(input_dir).as_posix(), "status": f"skipped: {reason}"}
            continue
        owners[name] = path.relative_to(input_dir)
        jobs.append(_Job(path, name, volume=volume[path]))
    return jobs, rows


def output_names(relative_paths: Sequence[Path]) -> list[Path]:
    """The output name of each input: its relative path with the suffix .tiff, or, where
    inputs differ only in their suffix (a.png, a.tif), with .tiff appended (a.png.tiff)."""
    names = [path.with_suffix(".tiff") for path in relative_paths]
    clashing = {name for name, count in Counter(names).items() if count > 1}
    return [path.with_name(path.name + ".tiff") if name in clashing else name
            for path, name in zip(relative_paths, names)]


def _resumed(job: _Job, output_dir: Path, record: Callable[[_Job, dict], None], budget_pixels: int) -> bool:
    """Whether an earlier run left all three outputs of ``job`` (written atomically, so an
    existing file is complete); if so its row is recorded from them, read in bands when
    they are larger than ``budget_pixels``."""
    paths = output_paths(output_dir, job.name)
    if not all(p.is_file() for p in paths.values()):
        return False
    size = image_size(paths["mask"]) or (0, 0)
    if size[0] * size[1] <= budget_pixels:
        row = _image_row(tifffile.imread(paths["mask"]), tifffile.imread(paths["instances"]))
    else:
        rows = max(1, budget_pixels // size[1])
        with scratch_folder(paths["mask"].parent) as scratch, open_lazily(paths["mask"], scratch) as mask, \
                open_lazily(paths["instances"], scratch) as instances:
            foreground = sum(int(np.count_nonzero(mask.array[r:r + rows])) for r in range(0, size[0], rows))
            objects = max(int(instances.array[r:r + rows].max()) for r in range(0, size[0], rows))
        row = {"height": size[0], "width": size[1], "foreground_fraction": foreground / (size[0] * size[1]),
               "objects": objects}
    record(job, {**row, "status": "resumed"})
    return True


def _read_jobs(jobs: Iterable[_Job], record: Callable[[_Job, dict], None]) -> Iterator[_Job]:
    """The jobs with their images read; unreadable or non-2D files are recorded as skipped."""
    for job in jobs:
        try:
            job.image = read_any_image(job.source)
        except DataFileError as error:
            _skip(job, record, _reason(error, job.source))
            continue
        yield job


def _skip(job: _Job, record: Callable[[_Job, dict], None], reason: str) -> None:
    """Log and record a file that is not predicted (nothing is written for it)."""
    log.warning("skipped %s: %s", printable(job.source), reason)
    record(job, {"output": None, "status": f"skipped: {reason}"})


def _reason(error: DataFileError, path: Path) -> str:
    """The error without the leading file name (the table has its own column), on one line."""
    text = " ".join(str(error).split())
    return printable(text.removeprefix(f"{path}: "))


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image from its header, without reading pixels; None if the header
    is unreadable (the whole-image reader then reports why)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return image_size(path)
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # Pillow raises several types for foreign, truncated or huge files
        return None


def _predict_in_bands(model: nn.Module, job: _Job, output_dir: Path, input_size: int, memory_mb: float, *,
                      threshold: float, min_size: int, overlap: float, batch_size: int, device: torch.device,
                      probability: str) -> dict:
    """Predict one TIFF too large for ``memory_mb`` band by band (emkt.bands); returns its row.
    The probability goes into an uncompressed TIFF, the mask into a scratch file from which
    the zlib-tiled mask and instance TIFFs are written, all by rows."""
    paths = output_paths(output_dir, job.name)
    with scratch_folder(paths["mask"].parent) as scratch, open_lazily(job.source, scratch) as image:
        height, width = image.shape
        mask = RowFile.create(scratch / "mask.raw", (height, width), np.uint8, tiff=False)
        with atomic_path(paths["probability"]) as tmp:
            prob_out = RowFile.create(tmp, (height, width), np.uint8 if probability == "uint8" else np.float32, tiff=True)
            for start, stop, kept in band_probabilities(model, image, input_size, overlap, batch_size, device,
                                                        memory_mb, printable(job.source)):
                prob_out[start:stop] = encode_probability(kept, probability)
                mask[start:stop] = np.multiply(kept >= threshold, 255, dtype=np.uint8)
            with atomic_path(paths["mask"]) as mask_tmp, atomic_path(paths["instances"]) as instances_tmp:
                row = write_mask_and_instances(mask, mask_tmp, instances_tmp, min_size,
                                               rows_within(memory_mb, width, LABEL_BYTES))
    return {**row, "status": "ok"}


def band_probabilities(model: nn.Module, image: LazyImage, input_size: int, overlap: float, batch_size: int,
                       device: torch.device, memory_mb: float, what: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, float32 probability of those rows) of an image too large for
    ``memory_mb``, band by band (emkt.bands): a first pass takes the whole image's conversion
    range and histogram, so every band is converted and z-scored as the whole image would be
    (``exact_zscore``). ``image`` is anything LazyImage-like (a TIFF, a section of a volume)."""
    height, width = image.shape
    value_range, histogram = grey_statistics(image, rows_within(memory_mb, width, BAND_BYTES))
    mean, std = histogram_moments(histogram)
    bands = plan_bands(height, input_size, overlap, rows_within(memory_mb, width, BAND_BYTES))
    log.info("%s: %d x %d pixels, over the memory budget: predicted in %d bands", what, height, width, len(bands))
    for band in bands:
        grey = image.grey(band.start, band.stop, value_range)
        prob = predict_tiles(model, grey[None], input_size, overlap, batch_size, device,
                             lambda band_image: zscore(band_image, mean, std))[0]
        yield band.out_start, band.out_stop, prob[band.out_start - band.start:band.out_stop - band.start]


def _write_outputs(output_dir: Path, name: Path, prob: np.ndarray, threshold: float, min_size: int,
                   probability: str) -> dict:
    """Write one image's probability, mask and instances; returns its row of the table."""
    mask, instances = postprocess(prob, threshold, min_size)
    paths = output_paths(output_dir, name)
    # Masks and labels are mostly zeros: deflate makes them tiny and every TIFF reader knows it.
    for folder, array, compression in (("probability", encode_probability(prob, probability), None),
                                       ("mask", mask, "zlib"), ("instances", instances, "zlib")):
        with atomic_path(paths[folder]) as tmp:
            tifffile.imwrite(tmp, array, compression=compression)
    return {**_image_row(mask, instances), "status": "ok"}


def _image_row(mask: np.ndarray, instances: np.ndarray) -> dict:
    """Size, foreground fraction and object count of one segmented image."""
    return {"height": mask.shape[0], "width": mask.shape[1], "foreground_fraction": float(np.mean(mask > 0)),
            "objects": int(instances.max(initial=0))}


def _write_table(rows: dict[Path, dict], path: Path, volumes: bool = False) -> None:
    """predictions.csv: one row per input file, in file order, with its output name (empty when
    skipped); with ``volumes``, also their sections and objects linked across sections."""
    columns = ["file", "output", "height", "width", "foreground_fraction", "objects", "status"]
    if volumes:
        columns[4:4] = ["sections"]
        columns[-1:-1] = ["objects_3d"]
    columns += ["predicted_loss"] if any("predicted_loss" in row for row in rows.values()) else []
    table = pd.DataFrame([rows[key] for key in sorted(rows)], columns=columns)
    # empty when skipped (and objects_3d for 2D images)
    table = table.astype({key: "Int64" for key in ("height", "width", "sections", "objects", "objects_3d")
                          if key in columns})
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _summary(pixels: list[int], rows: dict[Path, dict], seconds: float, device: torch.device,
             sections: int = 0) -> PredictionSummary:
    """Counts and throughput of a run; the rates count the images (and volumes) predicted now."""
    megapixels = sum(pixels) / 1e6
    statuses = [row["status"] for row in rows.values()]
    rate = (lambda amount: amount / seconds if seconds > 0 else 0.0)
    return PredictionSummary(images=len(pixels), skipped=sum(s.startswith("skipped") for s in statuses),
                             resumed=statuses.count("resumed"), megapixels=megapixels, seconds=seconds,
                             images_per_s=rate(len(pixels)), megapixels_per_s=rate(megapixels), device=str(device),
                             sections=sections)
