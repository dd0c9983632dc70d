"""The teacher as a proofreader: where a student's segmentation is probably wrong.

In prediction (``emkt predict --teacher``: ``Proofreader``) the teacher gives, per image, its
predicted loss, and an error-map teacher also its predicted per-pixel error map and the
predicted error of each object; the review queue lists them from most to least likely wrong.
On labelled sets (``evaluate_proofreading``, the workflow's external sets) it is measured
against random order and the student's own uncertainty (emkt.review).

Definitions, the same in prediction and evaluation:

* The teacher sees what it was trained on: the image z-scored per image, as the student saw
  it, and the student's probability map, in windows of the input size.
* An error-map teacher's error map is stitched from Gaussian-blended sliding windows, as
  probability maps are (emkt.inference); an image's predicted loss is the map's mean, an
  object's predicted error the map's mean over the object's pixels.
* A scalar teacher (Critic, ViT) predicts one loss per window: an image's predicted loss is
  the mean of its predictions on the image's tiles of the input size (emkt.evaluate.tiles:
  non-overlapping, edge-flush, zero-padded when smaller), the tiles evaluate_teachers scores.
  It has no per-object error.
* Both predict the student's mean per-pixel BCE with train.pos_weight (emkt.losses), the true
  loss of an image.
* The student's uncertainty is 1 - max(p, 1 - p) per pixel, averaged over images and
  objects the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from scipy import ndimage
from torch import nn

from .bands import image_size
from .evaluate import tiles
from .files import atomic_path
from .inference import sliding_window
from .losses import per_image_loss_of_prob
from .metrics import PixelAurocMeter, instances_from_probability, object_matches
from .models import is_dense_teacher
from .review import (CURVE_COLUMNS, ORACLE, PROOFREADING_COLUMNS, RANDOM, UNCERTAINTY, curve_rows, review_area,
                     review_curve)
from .scores import teacher_agreement
from .volumes import VolumeOutput, open_volume

ERROR_FOLDER = "error"
# What a prediction with a teacher writes beside the probability, mask and instance folders.
PROOFREAD_FOLDERS = (ERROR_FOLDER, "review")
log = logging.getLogger("emkt")
# section: a volume's section (emkt.predict_volumes), empty for a 2D image
QUEUE_COLUMNS = ["rank", "level", "file", "output", "section", "object", "predicted_error", "pixels", "top", "left",
                 "bottom", "right"]


def check_teacher(student: dict, teacher: dict, student_path: str | Path, teacher_path: str | Path) -> None:
    """ValueError in one line naming both files unless the teacher judges the inputs the
    student was trained on: the same input size and normalisation."""
    problems = [f"{what} {student[key]!r} vs {teacher[key]!r}" for key, what in
                (("input_size", "input size"), ("normalisation", "normalisation")) if student.get(key) != teacher.get(key)]
    if problems:
        raise ValueError(f"{teacher_path}: the teacher does not match the student {student_path} "
                         f"({'; '.join(problems)}): a teacher judges the inputs its student was trained on")


def uncertainty(prob: np.ndarray) -> np.ndarray:
    """The student's own uncertainty per pixel, 1 - max(p, 1 - p), in [0, 0.5]."""
    prob = np.asarray(prob, dtype=np.float32)
    return 1.0 - np.maximum(prob, 1.0 - prob)


def encode_error(error: np.ndarray, probability: str) -> np.ndarray:
    """An error map as written: float32 (the predicted BCE), or uint8 round(255 (1 - exp(-BCE))),
    a monotone map to 0..255 (decode: BCE = -ln(1 - v/255))."""
    error = np.maximum(np.asarray(error, dtype=np.float32), 0.0)
    if probability == "uint8":
        return np.round(-255.0 * np.expm1(-error)).astype(np.uint8)
    return error


@torch.no_grad()
def predicted_error_map(teacher: nn.Module, image: np.ndarray, prob: np.ndarray, input_size: int, overlap: float,
                        batch_size: int, device: torch.device) -> np.ndarray:
    """An error-map teacher's predicted per-pixel BCE of ``prob`` on a whole normalised image,
    stitched from Gaussian-blended windows of the input size (float32, the image's shape)."""
    teacher.eval()
    pair = np.stack([image, prob]).astype(np.float32)[None]
    out = sliding_window(lambda window: teacher(window[:, :1], window[:, 1:], dense=True), pair, input_size,
                         overlap, batch_size, device)
    return out[0, 0].float().numpy()


@torch.no_grad()
def tile_losses(teacher: nn.Module, image: np.ndarray, prob: np.ndarray, input_size: int, batch_size: int,
                device: torch.device) -> np.ndarray:
    """A teacher's predicted loss of each input-size tile of a whole image (emkt.evaluate.tiles)."""
    teacher.eval()
    pairs = [np.stack(tile) for _, tile in tiles([np.asarray(image, np.float32), np.asarray(prob, np.float32)],
                                                 input_size)]
    losses = []
    for start in range(0, len(pairs), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(pairs[start:start + batch_size]))).to(device)
        losses.append(teacher(batch[:, :1], batch[:, 1:]).float().cpu().numpy())
    return np.concatenate(losses)


@dataclass
class TeacherReview:
    """A teacher's judgement of one image: its predicted loss and, for an error-map teacher, the map."""

    loss: float
    error: np.ndarray | None = None


def review_image(teacher: nn.Module, image: np.ndarray, prob: np.ndarray, input_size: int, overlap: float,
                 batch_size: int, device: torch.device) -> TeacherReview:
    """The teacher's predicted loss of a whole image (and error map), as the module docstring defines them."""
    if is_dense_teacher(teacher):
        error = predicted_error_map(teacher, image, prob, input_size, overlap, batch_size, device)
        return TeacherReview(float(error.mean(dtype=np.float64)), error)
    return TeacherReview(float(tile_losses(teacher, image, prob, input_size, batch_size, device).mean()))


def object_table(instances: np.ndarray, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per object of an instance image (labels 1..n): ``object``, ``pixels``, its
    bounding box ``top, left, bottom, right`` (exclusive ends) and the mean of each score map
    over its pixels (a column per key of ``scores``)."""
    instances = np.asarray(instances)
    count = int(instances.max(initial=0))
    labels = np.arange(1, count + 1)
    boxes = ndimage.find_objects(instances, max_label=count)
    pixels = np.bincount(instances.ravel(), minlength=count + 1)[1:]
    with np.errstate(invalid="ignore"):  # unused labels: 0 / 0, dropped below
        means = {name: np.asarray(ndimage.mean(score, instances, labels), dtype=np.float64) if count else np.zeros(0)
                 for name, score in scores.items()}
    table = pd.DataFrame({
        "object": labels, "pixels": pixels,
        "top": [box[0].start if box else -1 for box in boxes], "left": [box[1].start if box else -1 for box in boxes],
        "bottom": [box[0].stop if box else -1 for box in boxes], "right": [box[1].stop if box else -1 for box in boxes],
        **means})
    return table[table["pixels"] > 0].reset_index(drop=True)


# --- prediction ----------------------------------------------------------------------------------


@dataclass
class Proofreader:
    """The teacher beside emkt.predict.predict_folder. ``review`` judges one image (its
    predicted loss for predictions.csv; for an error-map teacher it writes the error map to
    ``<output>/error/<name>`` and keeps each object's predicted error); ``review_section``
    judges one section of a volume (emkt.predict_volumes writes its error map); ``write_queue``
    writes review_queue.csv, ``write_figure`` the figure of the worst images and sections.
    Only the queue's rows are kept, never images or maps."""

    teacher: nn.Module
    input_size: int
    overlap: float = 0.25
    batch_size: int = 16
    device: torch.device | str = "cpu"
    threshold: float = 0.5
    min_size: int = 32
    probability: str = "float32"
    images: list[dict] = field(default_factory=list)
    objects: list[pd.DataFrame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.teacher = self.teacher.to(self.device).eval()

    @property
    def dense(self) -> bool:
        return is_dense_teacher(self.teacher)

    def review(self, output_dir: str | Path, name: Path, image: np.ndarray, prob: np.ndarray,
               file: str | None = None, source: Path | None = None) -> dict:
        """Judge one image (normalised as the student saw it) and its probability map; returns
        the columns it adds to the image's row of predictions.csv."""
        result = review_image(self.teacher, image, prob, self.input_size, self.overlap, self.batch_size, self.device)
        if result.error is not None:
            with atomic_path(Path(output_dir) / ERROR_FOLDER / name) as tmp:
                tifffile.imwrite(tmp, encode_error(result.error, self.probability), compression="zlib")
        self._record(result, prob, {"file": file, "output": name.as_posix(), "source": source})
        return {"predicted_loss": result.loss}

    def review_section(self, image: np.ndarray, prob: np.ndarray, *, file: str, output: str, section: int,
                       source: Path) -> TeacherReview:
        """Judge section ``section`` of a volume (``output``: its OME-Zarr image, relative to the
        output folder) as ``review`` judges an image; the caller writes the error map."""
        result = review_image(self.teacher, image, prob, self.input_size, self.overlap, self.batch_size, self.device)
        self._record(result, prob, {"file": file, "output": output, "section": section, "source": source})
        return result

    def _record(self, result: TeacherReview, prob: np.ndarray, keys: dict) -> None:
        """The queue's rows of one judged image or section: the image's, and its objects' (error maps only)."""
        if result.error is not None:
            instances = instances_from_probability(prob, self.threshold, self.min_size)
            found = object_table(instances, {"predicted_error": result.error})
            self.objects.append(found.assign(**{k: v for k, v in keys.items() if k != "source"}))
        self.images.append({"section": None, **keys, "predicted_error": result.loss})

    def queue(self) -> pd.DataFrame:
        """Images, then objects, each from the highest predicted error down (``QUEUE_COLUMNS``)."""
        images = pd.DataFrame(self.images, columns=["file", "output", "section", "predicted_error"])
        parts = [images.assign(level="image")]
        if self.objects:
            parts.append(pd.concat(self.objects, ignore_index=True).assign(level="object"))
        ranked = []
        for part in parts:
            part = part.reindex(columns=QUEUE_COLUMNS).astype({"section": "Int64"})
            part = part.sort_values(["predicted_error", "output", "section"], ascending=[False, True, True],
                                    kind="stable")
            ranked.append(part.assign(rank=np.arange(1, len(part) + 1)))
        queue = pd.concat(ranked, ignore_index=True).reindex(columns=QUEUE_COLUMNS)
        return queue.astype({c: "Int64" for c in ("section", "object", "pixels", "top", "left", "bottom", "right")})

    def write_queue(self, path: str | Path) -> pd.DataFrame:
        """review_queue.csv (atomically); returns the queue."""
        queue = self.queue()
        with atomic_path(path) as tmp:
            queue.to_csv(tmp, index=False)
        return queue

    def write_figure(self, output_dir: str | Path, count: int, out: str | Path) -> None:
        """The figure of the ``count`` images and volume sections the teacher ranks worst
        (emkt.plots.plot_review_examples), read back from the input files and the written mask
        and error map (a section's from its volume and OME-Zarr output)."""
        from .plots import plot_review_examples

        worst = sorted((row for row in self.images if row["source"] is not None),
                       key=lambda row: -row["predicted_error"])[:count]
        examples = []
        for row in worst:
            name, image, mask, error = _written(Path(output_dir), row)
            examples.append({"name": name, "image": image, "mask": mask,
                             "error": None if error is None else wrongness(error),
                             "predicted_loss": row["predicted_error"]})
        plot_review_examples(examples, out)


def _written(output_dir: Path, row: dict) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """(name, grey image, mask, written error map or None) of a judged image or section."""
    from .predict import read_any_image  # predict imports this module: import here

    if row.get("section") is None:
        error_path = output_dir / ERROR_FOLDER / row["output"]
        return (row["output"], read_any_image(row["source"]), tifffile.imread(output_dir / "mask" / row["output"]) > 0,
                tifffile.imread(error_path) if error_path.is_file() else None)
    z = row["section"]
    with open_volume(row["source"]) as volume:
        image = volume.section(z)
    written = VolumeOutput.read(output_dir / row["output"])
    error = written.error
    return (f"{row['output']} section {z}", image, written.label("mask")[z] > 0, None if error is None else error[z])


def review_resumed(reviewer: Proofreader, source: Path, name: Path, file: str, output_dir: str | Path,
                   budget_pixels: int) -> dict:
    """The teacher's review of an image an earlier run segmented (``--resume``), from the input
    image and its written probability map (a uint8 map read as p = v/255); an image over the
    memory budget (predicted in bands) is not reviewed (``predicted_loss`` NaN)."""
    from .predict import decode_probability, exact_zscore, output_paths, read_any_image  # predict imports this module

    path = output_paths(output_dir, name)["probability"]
    size = image_size(path) or (0, 0)
    if size[0] * size[1] > budget_pixels:
        log.warning("%s: over the memory budget, so not reviewed by the teacher", source)
        return {"predicted_loss": float("nan")}
    prob = decode_probability(tifffile.imread(path))
    return reviewer.review(output_dir, name, exact_zscore(read_any_image(source)), prob, file=file, source=source)


def wrongness(error: np.ndarray) -> np.ndarray:
    """An error map as written (float32 BCE or uint8 ``encode_error``) on the bounded scale
    1 - exp(-BCE) in [0, 1], for display."""
    error = np.asarray(error)
    if error.dtype == np.uint8:
        return error.astype(np.float32) / 255.0
    return -np.expm1(-np.maximum(error.astype(np.float32), 0.0))


# --- evaluation on labelled images ---------------------------------------------------------------


@dataclass
class _Scores:
    """One proofreader's scores of a student's images and objects, and its pixel AUROC meter."""

    images: list[float] = field(default_factory=list)
    objects: list[np.ndarray] = field(default_factory=list)
    auroc: PixelAurocMeter | None = None


def evaluate_proofreading(teachers: dict[str, nn.Module], input_size: int, items: list[dict],
                          student_probs: dict[str, list[np.ndarray]], *, dataset: str, seed: int, overlap: float,
                          batch_size: int, device: torch.device, pos_weight: float, threshold: float,
                          min_size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each teacher (by stage) as a proofreader of each student (probability maps of the
    labelled ``items``, by condition), beside the student's uncertainty, random order and the
    oracle: the review curves of images (wrong pixels found) and of predicted objects (objects
    matched to no true object at IoU >= 0.5 found; error-map teachers and uncertainty only),
    their areas ``aurc_pixels`` and ``aurc_objects``, the Spearman correlation of predicted
    and true per-image loss (``spearman``, and ``mae`` for teachers) and the pixel AUROC of the
    error map for the wrong pixels (``pixel_auroc``). Returns the long rows
    (emkt.review.PROOFREADING_COLUMNS) and the curves (CURVE_COLUMNS) on the grid."""
    long, curves = [], []
    for student, probs in student_probs.items():
        scores = {stage: _Scores(auroc=PixelAurocMeter() if is_dense_teacher(t) else None)
                  for stage, t in teachers.items()}
        scores[UNCERTAINTY] = _Scores(auroc=PixelAurocMeter(top=0.5))
        true_loss, wrong_pixels, wrong_objects = [], [], []
        for item, prob in zip(items, probs):
            valid = item["valid"] > 0 if "valid" in item else np.ones(prob.shape, bool)
            wrong = ((prob >= threshold) != (item["mask"] > 0)) & valid
            true_loss.append(float(per_image_loss_of_prob(
                torch.from_numpy(prob)[None, None], torch.from_numpy(item["mask"])[None, None].float(), pos_weight,
                valid=torch.from_numpy(valid.astype(np.float32))[None, None])[0]))
            wrong_pixels.append(float(wrong.sum()))
            maps = {UNCERTAINTY: uncertainty(prob)}
            scores[UNCERTAINTY].images.append(float(maps[UNCERTAINTY].mean(dtype=np.float64)))
            for stage, teacher in teachers.items():
                result = review_image(teacher, item["image"], prob, input_size, overlap, batch_size, device)
                scores[stage].images.append(result.loss)
                if result.error is not None:
                    maps[stage] = result.error
            for name, score_map in maps.items():
                if scores[name].auroc is not None:
                    scores[name].auroc.update(score_map, wrong, valid)
            instances = instances_from_probability(prob, threshold, min_size)
            labels, matched, _, _ = object_matches(instances, item["instances"], valid)
            table = object_table(instances, maps).set_index("object").reindex(labels)
            wrong_objects.append(~matched)
            for name in maps:
                scores[name].objects.append(table[name].to_numpy(dtype=np.float64))
        wrong_pixels, wrong_objects = np.array(wrong_pixels), np.concatenate(wrong_objects or [np.zeros(0, bool)])
        orders = dict(scores)
        orders[RANDOM] = _Scores(images=[0.0] * len(items), objects=[np.zeros(wrong_objects.size)])
        orders[ORACLE] = _Scores(images=list(wrong_pixels), objects=[wrong_objects.astype(np.float64)])
        keys = {"dataset": dataset, "student": student, "seed": seed}
        for name, s in orders.items():
            metrics = {}
            curve = review_curve(np.array(s.images), wrong_pixels)
            metrics["aurc_pixels"] = review_area(curve)
            curves.append(curve_rows(curve, **keys, proofreader=name, level="pixels"))
            if s.objects:
                curve = review_curve(np.concatenate(s.objects), wrong_objects)
                metrics["aurc_objects"] = review_area(curve)
                curves.append(curve_rows(curve, **keys, proofreader=name, level="objects"))
            if name not in (RANDOM, ORACLE):
                agreement = teacher_agreement(np.array(s.images), np.array(true_loss))
                metrics["spearman"] = agreement["spearman"]
                if name != UNCERTAINTY:  # the uncertainty is no loss: its absolute error means nothing
                    metrics["mae"] = agreement["mae"]
            if s.auroc is not None:
                metrics["pixel_auroc"] = s.auroc.compute()
            long += [{**keys, "proofreader": name, "metric": metric, "value": value} for metric, value in metrics.items()]
    return (pd.DataFrame(long, columns=PROOFREADING_COLUMNS),
            pd.concat(curves, ignore_index=True)[CURVE_COLUMNS] if curves else pd.DataFrame(columns=CURVE_COLUMNS))


def review_examples(teacher: nn.Module, input_size: int, items: list[dict], probs: list[np.ndarray], count: int, *,
                    overlap: float, batch_size: int, device: torch.device, threshold: float) -> dict[str, np.ndarray]:
    """The ``count`` labelled images a teacher ranks worst for one student's probability maps,
    as arrays for an .npz (emkt.review.examples_from_arrays reads them back): per example k,
    ``image_k`` (normalised), ``mask_k`` (the student's), ``wrong_k`` (its truly wrong
    pixels), ``error_k`` (the teacher's map on the 1 - exp(-BCE) scale; error-map teachers
    only); and ``names``, ``predicted_loss``."""
    reviews = [review_image(teacher, item["image"], prob, input_size, overlap, batch_size, device)
               for item, prob in zip(items, probs)]
    worst = sorted(range(len(items)), key=lambda k: -reviews[k].loss)[:count]
    arrays: dict[str, np.ndarray] = {"names": np.array([items[k]["name"] for k in worst]),
                                     "predicted_loss": np.array([reviews[k].loss for k in worst])}
    for slot, k in enumerate(worst):
        item, prob = items[k], probs[k]
        valid = item["valid"] > 0 if "valid" in item else np.ones(prob.shape, bool)
        arrays[f"image_{slot}"] = item["image"].astype(np.float16)
        arrays[f"mask_{slot}"] = prob >= threshold
        arrays[f"wrong_{slot}"] = ((prob >= threshold) != (item["mask"] > 0)) & valid
        if reviews[k].error is not None:
            arrays[f"error_{slot}"] = wrongness(reviews[k].error).astype(np.float16)
    return arrays
