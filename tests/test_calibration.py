"""Choices made on validation: temperature, threshold, pseudo-label confidence; the
threshold-free average precision; scores under a stored calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from emkt.calibration import (TemperatureScaled, calibrate, calibrated, fit_temperature, pseudo_label_confidence,
                              stored_calibration)
from emkt.evaluate import calibrated_scores, fine_tuning_scores, rescale_probability
from emkt.metrics import ScoreHistogram, SegmentationMeter

EVALUATE = {"overlap": 0.25, "batch_size": 4, "threshold": 0.5, "calibration_bins": 15}


def histogram_of(probs, mask, valid=None) -> ScoreHistogram:
    histogram = ScoreHistogram()
    histogram.update(np.asarray(probs, np.float32), np.asarray(mask), None if valid is None else np.asarray(valid))
    return histogram


def test_average_precision_of_a_hand_ranked_example():
    # ranked by probability: fg, bg, fg, bg -> precision 1/1 at recall 1/2, 2/3 at recall 1
    histogram = histogram_of([0.9, 0.8, 0.7, 0.2], [1, 0, 1, 0])
    assert histogram.average_precision() == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert histogram_of([0.9, 0.1], [1, 0]).average_precision() == pytest.approx(1.0)
    assert np.isnan(histogram_of([0.9, 0.1], [0, 0]).average_precision())


def test_histogram_iou_matches_the_segmentation_meter_and_skips_unlabelled_pixels():
    rng = np.random.default_rng(0)
    probs = (rng.integers(0, 1000, size=(1, 1, 40, 40)) + 0.5) / 1000  # bin centres: no edge ties
    mask = (rng.random((1, 1, 40, 40)) < 0.3).astype(np.float32)
    valid = (rng.random((1, 1, 40, 40)) < 0.8).astype(np.float32)
    for threshold in (0.3, 0.5, 0.71):
        meter = SegmentationMeter(threshold=threshold)
        meter.update(torch.from_numpy(probs), torch.from_numpy(mask), valid=torch.from_numpy(valid))
        assert histogram_of(probs, mask, valid).iou(threshold) == pytest.approx(meter.compute()["iou"])


def test_best_threshold_is_chosen_on_the_grid_nearest_the_usual_one_among_equals():
    # foreground at 0.3, background at 0.1: every threshold in (0.1, 0.3] separates them
    histogram = histogram_of([0.3, 0.3, 0.1, 0.1], [1, 1, 0, 0])
    assert histogram.best_threshold() == pytest.approx(0.3)
    assert histogram.iou(0.3) == pytest.approx(1.0)
    # a well-separated map keeps 0.5
    assert histogram_of([0.9, 0.1], [1, 0]).best_threshold() == pytest.approx(0.5)


def test_histogram_counts_round_trip_and_merge():
    a, b = histogram_of([0.9, 0.2], [1, 0]), histogram_of([0.6], [0])
    again = ScoreHistogram.from_counts(a.counts())
    assert again.iou(0.5) == a.iou(0.5)
    merged = again.merge(b)
    assert merged.confusion(0.5) == (1.0, 1.0, 0.0, 1.0)


def test_pseudo_label_confidence_is_the_lowest_with_precise_labels_of_both_classes():
    # foreground labels: right at 0.95, 0.95, wrong at 0.75; background labels: right at 0.1 x3, wrong at 0.195
    probs = [0.95, 0.95, 0.75, 0.1, 0.1, 0.1, 0.195]
    mask = [1, 1, 0, 0, 0, 0, 1]
    histogram = histogram_of(probs, mask)
    fg, bg, kept = histogram.confidence_precision(0.7)
    assert (fg, bg, kept) == (pytest.approx(2 / 3), pytest.approx(3 / 4), pytest.approx(1.0))
    # at 0.81 the wrong background label (confidence 0.805) and the wrong fg (0.75) drop out
    assert pseudo_label_confidence(histogram, 0.9) == pytest.approx(0.81)
    assert histogram.confidence_precision(0.81) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(5 / 7))


def test_temperature_scaling_recovers_an_overconfidence_factor():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2, size=(2, 64, 64))
    mask = (rng.random(true_logit.shape) < 1 / (1 + np.exp(-true_logit))).astype(np.float32)
    items = [{"mask": m, "valid": np.ones_like(m)} for m in mask]
    assert fit_temperature([3.0 * z for z in true_logit], items) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature([z for z in true_logit], items) == pytest.approx(1.0, rel=0.1)
    # one class only: nothing to fit
    assert fit_temperature([z for z in true_logit], [{"mask": np.zeros_like(m)} for m in mask]) == 1.0


class Scaled(nn.Module):
    """A 'segmenter' whose logit is a fixed multiple of the image: calibratable by hand."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(float(factor)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.factor


def overconfident_items(seed: int, count: int = 3, size: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        image = rng.normal(0, 1.5, size=(size, size)).astype(np.float32)
        mask = (rng.random(image.shape) < 1 / (1 + np.exp(-image))).astype(np.uint8)
        items.append({"name": f"i{index}", "image": image, "mask": mask, "valid": np.ones_like(mask)})
    return items


def test_calibrate_stores_what_evaluation_applies_and_calibration_helps_on_new_images():
    model = Scaled(4.0)  # logits 4x the true ones: overconfident
    calibration = calibrate(model, overconfident_items(2), 16, EVALUATE, torch.device("cpu"))
    assert calibration["temperature"] == pytest.approx(4.0, rel=0.15)
    assert calibration["ece_calibrated"] < calibration["ece"]
    assert set(calibration["histogram"]) == {"foreground", "background"}
    assert 0.05 <= calibration["threshold"] <= 0.95
    # applied to other images (as on the test split), the calibrated ECE is lower too
    items = overconfident_items(3)
    probs = [torch.sigmoid(model(torch.from_numpy(item["image"]))).detach().numpy() for item in items]
    scores = calibrated_scores(items, probs, calibration)
    meter = SegmentationMeter()
    for item, prob in zip(items, probs):
        meter.update(torch.from_numpy(prob)[None, None], torch.from_numpy(item["mask"])[None, None].float())
    assert scores["ece_calibrated"] < meter.compute()["ece"]
    assert scores["threshold"] == calibration["threshold"] and scores["temperature"] == calibration["temperature"]
    assert 0 < scores["ap"] <= 1 and 0 < scores["iou_tuned"] <= 1


def test_a_calibrated_network_divides_its_logits_and_an_old_checkpoint_is_used_as_it_is():
    model = Scaled(2.0)
    image = torch.ones(1, 1, 4, 4)
    assert torch.allclose(TemperatureScaled(model, 4.0)(image), model(image) / 4.0)
    assert isinstance(calibrated(model, {"extra": {"calibration": {"temperature": 2.0}}}), TemperatureScaled)
    assert calibrated(model, {"extra": {}}) is model
    assert stored_calibration({"extra": {}}) is None


def test_rescaled_probabilities_at_temperature_one_are_unchanged_and_stay_finite():
    prob = np.array([0.0, 0.2, 0.5, 0.9, 1.0], np.float32)
    assert np.allclose(rescale_probability(prob, 1.0), prob, atol=1e-6)
    hotter = rescale_probability(prob, 2.0)
    assert np.all(np.isfinite(hotter)) and hotter[1] > 0.2 and hotter[3] < 0.9 and hotter[2] == pytest.approx(0.5)


def test_kept_start_only_for_fine_tuned_networks():
    assert fine_tuning_scores({"extra": {"condition": "baseline"}}) == {}
    assert fine_tuning_scores({"extra": {"fine_tuned_from": "joint", "kept_epoch": 0}}) == {"kept_start": 1.0}
    assert fine_tuning_scores({"extra": {"fine_tuned_from": "joint", "kept_epoch": 3}}) == {"kept_start": 0.0}


def test_pseudo_label_threshold_is_the_setting_or_chosen_from_the_stored_validation_histogram():
    from emkt.calibration import pseudo_label_threshold

    histogram = histogram_of([0.95, 0.95, 0.75, 0.1, 0.1, 0.1, 0.195], [1, 1, 0, 0, 0, 0, 1])
    checkpoint = {"extra": {"calibration": {"temperature": 1.0, "histogram": histogram.counts()}}}
    assert pseudo_label_threshold(0.9, 0.9, checkpoint) == 0.9
    assert pseudo_label_threshold("auto", 0.9, checkpoint) == pytest.approx(0.81)
    with pytest.raises(ValueError, match="old.pth.*auto"):
        pseudo_label_threshold("auto", 0.9, {"extra": {}}, "old.pth")
