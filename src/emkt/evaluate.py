"""The evaluation of students and teachers on whole images: pixel, calibration and object
metrics of a segmenter's probability maps (from emkt.inference), their scores under a
calibration chosen on validation, and how well a teacher predicts a student's loss."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from .inference import predict_probability
from .losses import per_image_loss_of_prob
from .metrics import (InstanceMeter, PixelAurocMeter, ScoreHistogram, SegmentationMeter, instance_scores_of_sections,
                      instance_summary, instances_from_probability, teacher_agreement)
from .store import edge_flush_starts


def evaluate_segmenter(model: nn.Module, items: list[dict], input_size: int, overlap: float,
                       batch_size: int, device: torch.device, threshold: float = 0.5,
                       num_bins: int = 15, min_object_size: int = 0
                       ) -> tuple[dict[str, float], pd.DataFrame, list[np.ndarray]]:
    """Pooled metrics, per-image metrics and the probability maps of ``items`` (whole images):
    pixel and calibration metrics, and object metrics of the instances the probability maps
    give (``min_object_size``: smaller predicted objects are dropped, as in prediction)."""
    meter, probs = score_segmenter(model, items, input_size, overlap, batch_size, device, threshold, num_bins)
    objects = score_instances(items, probs, threshold, min_object_size)
    per_image = meter.per_image().merge(objects.per_image(), on="name", how="left", validate="one_to_one")
    return {**meter.compute(), **objects.compute()}, per_image, probs


def calibrated_scores(items: list[dict], probs: list[np.ndarray], calibration: dict, num_bins: int = 15
                      ) -> dict[str, float]:
    """Scores of probability maps under a calibration chosen on validation
    (emkt.calibration.calibrate): ``iou_tuned`` at its threshold and ``ece_calibrated`` of the
    probabilities at its temperature, ``ap`` (threshold-free), and the ``threshold`` and
    ``temperature`` themselves, so that tables show what was applied."""
    temperature = float(calibration["temperature"])
    histogram, meter = calibrated_meters(items, [rescale_probability(prob, temperature) for prob in probs], num_bins)
    return {"iou_tuned": histogram.iou(calibration["threshold"]), "ap": histogram.average_precision(),
            "ece_calibrated": meter.compute()["ece"], "threshold": float(calibration["threshold"]),
            "temperature": temperature}


def calibrated_meters(items: list[dict], calibrated_probs: list[np.ndarray], num_bins: int = 15
                      ) -> tuple[ScoreHistogram, SegmentationMeter]:
    """The score histogram (thresholds, AP) and the calibration meter (ECE) of calibrated
    probability maps of ``items``, over their labelled pixels: what the validation calibration
    and the test scores under it both measure."""
    histogram, meter = ScoreHistogram(), SegmentationMeter(num_bins=num_bins)
    for item, prob in zip(items, calibrated_probs):
        valid = item.get("valid")
        histogram.update(prob, item["mask"], valid)
        meter.update(torch.from_numpy(prob)[None, None], torch.from_numpy(item["mask"])[None, None].float(),
                     valid=None if valid is None else torch.from_numpy(valid)[None, None])
    return histogram, meter


def fine_tuning_scores(checkpoint: dict) -> dict[str, float]:
    """``kept_start`` (1.0 or 0.0) for a network fine-tuned from another one (checkpoint extra
    ``fine_tuned_from``): whether no epoch beat its start on validation, so that it is its
    start. Empty for networks trained from scratch."""
    extra = checkpoint.get("extra", {})
    if "fine_tuned_from" not in extra:
        return {}
    return {"kept_start": float(int(extra["kept_epoch"]) == 0)}


def rescale_probability(prob: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T) in float32; p is clamped to (1e-7, 1 - 1e-7) first, where float32
    sigmoid outputs saturate, so certain pixels stay certain but finite."""
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return (1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))).astype(np.float32)


def score_instances(items: list[dict], probs: list[np.ndarray], threshold: float, min_object_size: int) -> InstanceMeter:
    """An InstanceMeter that has matched each probability map's objects to its item's instances."""
    meter = InstanceMeter(threshold=threshold, min_size=min_object_size)
    for item, prob in zip(items, probs):
        meter.update(prob, item["instances"], item.get("valid"), name=item["name"])
    return meter


def volume_instance_scores(items: list[dict], probs: list[np.ndarray], threshold: float, min_object_size: int
                           ) -> dict[str, float]:
    """Object metrics of objects across sections, pooled over the volumes among ``items``
    (sections of labelled volumes: emkt.data.load_folder_images): ``object_f1_3d`` and
    ``pq_3d``. Predicted objects are each section's instances (as ``score_instances`` makes
    them) linked across adjacent sections by overlap (emkt.volumes.link_sections, as
    ``python -m emkt predict --link-3d`` does); true objects are the label volume's ids, or,
    for a binary label volume, its sections' components linked the same way. Empty when
    ``items`` hold no volume sections."""
    from .volumes import link_sections

    def linked(sections: list[np.ndarray]) -> list[np.ndarray]:
        height = sections[0].shape[0]
        _, labels = link_sections(lambda z, start, stop: sections[z][start:stop],
                                  [int(s.max(initial=0)) for s in sections], height, height)
        return [labels(z, 0, height) for z in range(len(sections))]

    volumes: dict[str, list[tuple[dict, np.ndarray]]] = {}
    for item, prob in zip(items, probs):
        if "volume" in item:
            volumes.setdefault(item["volume"], []).append((item, prob))
    if not volumes:
        return {}
    counts = np.zeros(4)
    for sections in volumes.values():
        sections.sort(key=lambda pair: pair[0]["section"])
        pred = linked([instances_from_probability(prob, threshold, min_object_size) for _, prob in sections])
        gt = ([item["labels_3d"] for item, _ in sections] if "labels_3d" in sections[0][0]
              else linked([item["instances"] for item, _ in sections]))
        scores = instance_scores_of_sections(pred, gt, [item.get("valid") for item, _ in sections])
        counts += [scores["tp"], scores["fp"], scores["fn"], scores["iou_sum"]]
    return {f"{key}_3d": value for key, value in instance_summary(*counts).items()}


def score_segmenter(model: nn.Module, items: list[dict], input_size: int, overlap: float,
                    batch_size: int, device: torch.device, threshold: float = 0.5,
                    num_bins: int = 15) -> tuple[SegmentationMeter, list[np.ndarray]]:
    """A meter that has seen ``items`` (whole images) and their probability maps; meters of
    several processes' shares merge into the metrics of all (SegmentationMeter.merge)."""
    meter = SegmentationMeter(threshold=threshold, num_bins=num_bins)
    probs = []
    for item in items:
        prob = predict_probability(model, item["image"], input_size, overlap, batch_size, device)
        valid = item.get("valid")  # unlabelled pixels are not scored
        meter.update(torch.from_numpy(prob)[None, None], torch.from_numpy(item["mask"])[None, None].float(),
                     names=[item["name"]], valid=None if valid is None else torch.from_numpy(valid)[None, None])
        probs.append(prob)
    return meter, probs


def tiles(arrays: list[np.ndarray], size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Non-overlapping (but edge-flush) ``size`` x ``size`` tiles of same-shaped arrays, zero-padded if smaller."""
    height, width = arrays[0].shape
    pad = ((0, max(0, size - height)), (0, max(0, size - width)))
    if any(p[1] for p in pad):
        arrays = [np.pad(a, pad) for a in arrays]
    index = 0
    for top in edge_flush_starts(height, size):
        for left in edge_flush_starts(width, size):
            yield index, [a[top:top + size, left:left + size] for a in arrays]
            index += 1


@torch.no_grad()
def teacher_predictions(teacher: nn.Module, items: list[dict], probs: list[np.ndarray],
                        input_size: int, device: torch.device, pos_weight: float) -> pd.DataFrame:
    """Per tile of the input size: the teacher's predicted loss of a probability map and the
    true loss, the student's BCE with ``pos_weight`` (train.pos_weight) that the teacher was
    trained to predict (losses.per_image_loss_of_prob).

    The teacher was trained on crops of the input size, so it is asked about tiles, never
    about resized images.
    """
    teacher.eval()
    rows = []
    for item, prob in zip(items, probs):
        arrays = [item["image"], prob, item["mask"]] + ([item["valid"]] if "valid" in item else [])
        for index, tile in tiles(arrays, input_size):
            image_t, prob_t, mask_t, *valid_t = (
                torch.from_numpy(np.ascontiguousarray(a))[None, None].float().to(device) for a in tile)
            rows.append({"image": item["name"], "tile": index,
                         "predicted": float(teacher(image_t, prob_t)[0]),
                         # over the tile's labelled pixels only (tiles() pads valid with 0)
                         "true": float(per_image_loss_of_prob(prob_t, mask_t, pos_weight,
                                                              valid=valid_t[0] if valid_t else None)[0])})
    return pd.DataFrame(rows)


@torch.no_grad()
def pixel_error_auroc(teacher: nn.Module, items: list[dict], probs: list[np.ndarray], input_size: int,
                      device: torch.device, threshold: float = 0.5) -> PixelAurocMeter:
    """How well an error-map teacher's predicted per-pixel error finds the pixels a student got
    wrong (``(prob >= threshold) != mask``), over the labelled pixels of input-size tiles."""
    teacher.eval()
    meter = PixelAurocMeter()
    for item, prob in zip(items, probs):
        valid = item["valid"] if "valid" in item else np.ones(prob.shape, np.float32)
        for _, (image, tile_prob, mask, tile_valid) in tiles([item["image"], prob, item["mask"], valid], input_size):
            image_t, prob_t = (torch.from_numpy(np.ascontiguousarray(a))[None, None].float().to(device)
                               for a in (image, tile_prob))
            predicted = teacher(image_t, prob_t, dense=True)[0, 0].float().cpu().numpy()
            meter.update(predicted, (tile_prob >= threshold) != (mask > 0), tile_valid)
    return meter


def summarise_teacher(per_tile: pd.DataFrame) -> dict[str, float]:
    """MAE and Spearman correlation between predicted and true per-tile loss."""
    return teacher_agreement(per_tile["predicted"].to_numpy(), per_tile["true"].to_numpy())


def panel_arrays(items: list[dict], probs: list[np.ndarray], count: int, max_side: int = 256) -> dict[str, np.ndarray]:
    """Centre crops of the first ``count`` images, their GT and probabilities, for the panel figure.

    All crops share one side (the smallest image side, at most ``max_side``) so they stack.
    """
    chosen = list(zip(items, probs))[:count]
    if not chosen:
        empty = np.zeros((0, 1, 1), dtype=np.float32)
        return {"image": empty, "gt": empty.astype(np.uint8), "prob": empty, "names": np.array([], dtype=str)}
    side = min(max_side, *(min(item["image"].shape) for item, _ in chosen))

    def centre(array: np.ndarray) -> np.ndarray:
        top, left = (array.shape[0] - side) // 2, (array.shape[1] - side) // 2
        return array[top:top + side, left:left + side]

    return {
        "image": np.stack([centre(item["image"]) for item, _ in chosen]).astype(np.float32),
        "gt": np.stack([centre(item["mask"]) for item, _ in chosen]).astype(np.uint8),
        "prob": np.stack([centre(prob) for _, prob in chosen]).astype(np.float16),
        "names": np.array([item["name"] for item, _ in chosen]),
    }
