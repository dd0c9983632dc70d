"""What a segmentation network's validation images say about its probabilities: a temperature
that calibrates them, the threshold with the best validation IoU and the confidence at which
its hard labels are precise enough to serve as pseudo-labels.

Every choice here is made on the validation split and stored in the network's checkpoint
(``extra["calibration"]``), so that evaluation reports test numbers for what was chosen
beforehand, and a network whose probabilities become another network's targets
(pseudo-labels) is calibrated first.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .evaluate import calibrated_meters
from .inference import sliding_window
from .metrics import ScoreHistogram, SegmentationMeter

log = logging.getLogger(__name__)

# Pixels used to fit the temperature: a seeded sample keeps the fit fast and its memory
# bounded on thousands of validation images; one parameter needs far fewer.
FIT_PIXELS = 1_000_000
TEMPERATURE_RANGE = (0.05, 20.0)
# Confidence thresholds tried for pseudo-labels (max(p, 1-p) >= c keeps a pixel).
CONFIDENCE_GRID = np.round(np.arange(0.5, 0.995, 0.01), 2)


class TemperatureScaled(nn.Module):
    """A segmenter whose logits are divided by a temperature: calibrated probabilities with
    the same ranking and the same mask at the correspondingly moved threshold."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image) / self.temperature


@torch.no_grad()
def validation_logits(model: nn.Module, items: list[dict], input_size: int, overlap: float, batch_size: int,
                      device: torch.device) -> list[np.ndarray]:
    """Whole-image logits (Gaussian-blended sliding windows, as evaluation predicts) of ``items``."""
    model.eval()
    return [sliding_window(model, item["image"][None], input_size, overlap, batch_size, device)[0, 0].numpy()
            for item in items]


def fit_temperature(logits: list[np.ndarray], items: list[dict], seed: int = 0, max_pixels: int = FIT_PIXELS) -> float:
    """The temperature T minimising the BCE of sigmoid(logit / T) on the labelled pixels of
    ``items`` (temperature scaling, Guo et al. 2017), fitted on log T by L-BFGS; 1.0 when the
    pixels are all of one class, where a temperature is not identifiable."""
    z = np.concatenate([logit[_valid(item)] for logit, item in zip(logits, items)]).astype(np.float32)
    y = np.concatenate([item["mask"][_valid(item)] for item in items]).astype(np.float32)
    if z.size == 0 or y.min() == y.max():
        return 1.0
    if z.size > max_pixels:
        keep = np.random.default_rng(seed).choice(z.size, max_pixels, replace=False)
        z, y = z[keep], y[keep]
    z_t, y_t = torch.from_numpy(z).double(), torch.from_numpy(y).double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z_t / log_t.exp(), y_t)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(np.clip(np.exp(log_t.item()), *TEMPERATURE_RANGE))


def _valid(item: dict) -> np.ndarray:
    return item["valid"] > 0 if "valid" in item else np.ones(item["mask"].shape, bool)


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))


def pseudo_label_confidence(histogram: ScoreHistogram, target_precision: float) -> float:
    """The lowest confidence c of ``CONFIDENCE_GRID`` at which the hard labels of the pixels with
    max(p, 1-p) >= c are at least ``target_precision`` right for each class (foreground and
    background labels alike, so that rare mitochondria are not drowned by the background);
    the highest grid value when none reaches it (logged)."""
    for confidence in CONFIDENCE_GRID:
        fg_precision, bg_precision, _ = histogram.confidence_precision(float(confidence))
        # a class with no kept label makes no wrong ones
        if all(np.isnan(p) or p >= target_precision for p in (fg_precision, bg_precision)):
            return float(confidence)
    log.warning("no pseudo-label confidence reaches precision %.3g on validation; using %.2f",
                target_precision, CONFIDENCE_GRID[-1])
    return float(CONFIDENCE_GRID[-1])


def calibrate(model: nn.Module, items: list[dict], input_size: int, evaluate_cfg: dict, device: torch.device,
              seed: int = 0) -> dict:
    """Fit a segmenter's temperature and threshold on validation ``items`` (whole images);
    returns what the checkpoint stores (``extra["calibration"]``):

    - ``temperature``; ``threshold``: the best-IoU threshold of the calibrated probabilities;
    - validation scores: ``iou`` (at ``evaluate.threshold``, uncalibrated, as training selected
      its epoch), ``iou_tuned`` (calibrated, at ``threshold``), ``ap``, ``ece`` (before) and
      ``ece_calibrated`` (after);
    - ``histogram``: the calibrated validation probabilities per class (``ScoreHistogram``
      counts), from which a pseudo-label confidence is chosen later for any target precision.
    """
    logits = validation_logits(model.to(device), items, input_size, evaluate_cfg["overlap"],
                               evaluate_cfg["batch_size"], device)
    temperature = fit_temperature(logits, items, seed)
    raw = SegmentationMeter(evaluate_cfg["threshold"], evaluate_cfg["calibration_bins"])
    for logit, item in zip(logits, items):
        raw.update(torch.from_numpy(_sigmoid(logit))[None, None], torch.from_numpy(item["mask"])[None, None].float(),
                   names=[item["name"]], valid=torch.from_numpy(_valid(item))[None, None])
    histogram, calibrated = calibrated_meters(items, [_sigmoid(logit / temperature) for logit in logits],
                                              evaluate_cfg["calibration_bins"])
    raw_scores = raw.compute()
    threshold = histogram.best_threshold()
    scores = {"temperature": temperature, "threshold": threshold, "iou": raw_scores["iou"],
              "iou_tuned": histogram.iou(threshold), "ap": histogram.average_precision(),
              "ece": raw_scores["ece"], "ece_calibrated": calibrated.compute()["ece"]}
    log.info("calibrated on %d validation images: %s", len(items),
             ", ".join(f"{key}={value:.4g}" for key, value in scores.items()))
    return {**scores, "images": len(items), "histogram": histogram.counts()}


def stored_calibration(checkpoint: dict) -> dict | None:
    """The calibration a checkpoint carries (``calibrate``), or None for one written before it."""
    return checkpoint.get("extra", {}).get("calibration")


def calibrated(model: nn.Module, checkpoint: dict) -> nn.Module:
    """The network with its stored temperature applied, for use as a source of targets; a
    checkpoint without calibration is used as it is (with a warning)."""
    calibration = stored_calibration(checkpoint)
    if calibration is None:
        log.warning("checkpoint has no calibration (written before emkt stored one): probabilities used as they are")
        return model
    return TemperatureScaled(model, calibration["temperature"])


def pseudo_label_threshold(setting: float | str, target_precision: float, teacher_checkpoint: dict,
                           path: str = "<teacher>") -> float:
    """The confidence below which pool pixels are ignored (config pseudo_label.threshold): the
    number itself, or with 'auto' ``pseudo_label_confidence`` of the teacher's calibrated
    validation probabilities, stored in its checkpoint."""
    if setting != "auto":
        return float(setting)
    calibration = stored_calibration(teacher_checkpoint)
    if calibration is None:
        raise ValueError(f"{path}: pseudo_label.threshold 'auto' needs the validation calibration that emkt stores "
                         "in checkpoints since it chooses on validation; retrain the teacher or set a number")
    return pseudo_label_confidence(ScoreHistogram.from_counts(calibration["histogram"]), target_precision)
