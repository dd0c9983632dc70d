"""Metrics checked against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from emkt.evaluate import evaluate_segmenter, teacher_predictions
from emkt.losses import per_image_loss_of_prob
from emkt.metrics import InstanceMeter, PixelAurocMeter, SegmentationMeter, instance_scores, instances_from_probability, teacher_agreement

# 4x4 case. Predicted positive (prob >= 0.5): (0,0) (0,1) (1,0) (1,2) (3,3).
# GT positive: (0,0) (0,1) (1,0) (1,1).  => tp=3, fp=2, fn=1, tn=10.
PROB_A = [
    [0.9, 0.8, 0.2, 0.1],
    [0.7, 0.4, 0.6, 0.1],
    [0.1, 0.1, 0.3, 0.2],
    [0.2, 0.1, 0.1, 0.9],
]
GT_A = [
    [1, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]
# 2x3 case: tp=1, fp=0, fn=1, tn=4.
PROB_B = [[0.9, 0.1, 0.1], [0.1, 0.1, 0.1]]
GT_B = [[1, 0, 0], [0, 0, 1]]


def t(x) -> torch.Tensor:
    """(H,W) nested list -> (1,1,H,W) float tensor."""
    return torch.tensor(x, dtype=torch.float32)[None, None]


def test_hand_worked_4x4():
    meter = SegmentationMeter()
    meter.update(t(PROB_A), t(GT_A), names=["a"])
    got = meter.compute()
    assert got["iou"] == pytest.approx(3 / 6)
    assert got["dice"] == pytest.approx(6 / 9)
    assert got["accuracy"] == pytest.approx(13 / 16)
    assert got["precision"] == pytest.approx(3 / 5)
    assert got["recall"] == pytest.approx(3 / 4)
    row = meter.per_image().iloc[0]
    assert row["name"] == "a"
    assert row["iou"] == pytest.approx(0.5)
    assert row["foreground_fraction"] == pytest.approx(4 / 16)
    assert row["predicted_fraction"] == pytest.approx(5 / 16)
    assert row["ece"] == pytest.approx(got["ece"])


def test_pooling_across_updates_of_different_sizes():
    meter = SegmentationMeter()
    meter.update(t(PROB_A), t(GT_A))
    meter.update(t(PROB_B), t(GT_B))
    got = meter.compute()
    # pooled: tp=4, fp=2, fn=2, tn=14
    assert got["iou"] == pytest.approx(4 / 8)
    assert got["dice"] == pytest.approx(8 / 12)
    assert got["accuracy"] == pytest.approx(18 / 22)
    assert got["precision"] == pytest.approx(4 / 6)
    assert got["recall"] == pytest.approx(4 / 6)
    per = meter.per_image()
    assert list(per["name"]) == ["image_0", "image_1"]
    assert list(per.columns) == [
        "name", "tp", "fp", "fn", "tn", "iou", "dice", "accuracy", "precision", "recall", "ece",
        "foreground_fraction", "predicted_fraction",
    ]  # fmt: skip
    # the per-image counts add up to the pooled ones (what a bootstrap over images resamples)
    assert per[["tp", "fp", "fn", "tn"]].sum().tolist() == [4, 2, 2, 14]
    b = per.iloc[1]
    assert b["iou"] == pytest.approx(1 / 2)
    assert b["dice"] == pytest.approx(2 / 3)
    assert b["precision"] == pytest.approx(1.0)
    assert b["recall"] == pytest.approx(1 / 2)
    assert b["foreground_fraction"] == pytest.approx(2 / 6)


def test_batch_update_equals_single_updates():
    rng = np.random.default_rng(0)
    prob = torch.from_numpy(rng.random((3, 1, 8, 8)).astype(np.float32))
    gt = (torch.from_numpy(rng.random((3, 1, 8, 8))) > 0.6).float()
    batched, single = SegmentationMeter(), SegmentationMeter()
    batched.update(prob, gt, names=["x", "y", "z"])
    for i in range(3):
        single.update(prob[i : i + 1], gt[i : i + 1])
    assert batched.compute() == pytest.approx(single.compute())
    np.testing.assert_allclose(
        batched.per_image().drop(columns="name").to_numpy(),
        single.per_image().drop(columns="name").to_numpy(),
    )


def test_empty_conventions():
    meter = SegmentationMeter()
    zeros = torch.zeros(1, 1, 3, 3)
    meter.update(zeros + 0.1, zeros)  # both empty
    meter.update(zeros + 0.9, zeros)  # predicted, no GT
    meter.update(zeros + 0.1, zeros + 1)  # GT, nothing predicted
    per = meter.per_image()
    both, pred_only, gt_only = (per.iloc[i] for i in range(3))
    assert both["iou"] == 1.0 and both["dice"] == 1.0 and both["accuracy"] == 1.0
    assert math.isnan(both["precision"]) and math.isnan(both["recall"])
    assert pred_only["iou"] == 0.0 and pred_only["dice"] == 0.0
    assert pred_only["precision"] == 0.0 and math.isnan(pred_only["recall"])
    assert gt_only["iou"] == 0.0 and gt_only["recall"] == 0.0
    assert math.isnan(gt_only["precision"])

    only_empty = SegmentationMeter()
    only_empty.update(zeros + 0.1, zeros)
    got = only_empty.compute()
    assert got["iou"] == 1.0 and got["dice"] == 1.0
    assert math.isnan(got["precision"]) and math.isnan(got["recall"])


def test_ece_mce_hand_worked_and_pooled():
    meter = SegmentationMeter(num_bins=10)
    # bin of 0.2: mean p 0.2, mean gt 1/2 -> gap 0.3; bin of 0.9: mean gt 1 -> gap 0.1
    meter.update(t([[0.2, 0.2], [0.9, 0.9]]), t([[0, 1], [1, 1]]))
    got = meter.compute()
    assert got["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.1, abs=1e-6)
    assert got["mce"] == pytest.approx(0.3, abs=1e-6)
    assert meter.per_image()["ece"].iloc[0] == pytest.approx(0.2, abs=1e-6)

    # second image (1x3): pooled bin 0.2 has 3 pixels, gt 1/3 -> gap 2/15;
    # bin 0.9 has 4 pixels, gt 3/4 -> gap 0.15. ECE = 3/7*2/15 + 4/7*0.15 = 1/7.
    meter.update(t([[0.2, 0.9, 0.9]]), t([[0, 0, 1]]))
    got = meter.compute()
    assert got["ece"] == pytest.approx(1 / 7, abs=1e-6)
    assert got["mce"] == pytest.approx(0.15, abs=1e-6)
    # per-image ECE of the second image alone: gaps 0.2 (1 px) and 0.4 (2 px)
    assert meter.per_image()["ece"].iloc[1] == pytest.approx((0.2 + 2 * 0.4) / 3, abs=1e-6)


def test_perfect_prediction():
    gt = t(GT_A)
    meter = SegmentationMeter()
    meter.update(gt * 0.98 + 0.01, gt)  # 0.99 on foreground, 0.01 on background
    got = meter.compute()
    assert got["iou"] == 1.0 and got["dice"] == 1.0 and got["accuracy"] == 1.0
    assert got["precision"] == 1.0 and got["recall"] == 1.0
    assert got["ece"] == pytest.approx(0.01, abs=1e-5)
    assert got["mce"] == pytest.approx(0.01, abs=1e-5)


def test_threshold_is_inclusive_and_configurable():
    meter = SegmentationMeter(threshold=0.3)
    meter.update(t([[0.3, 0.2]]), t([[1, 0]]))
    assert meter.compute()["iou"] == 1.0


def test_invalid_inputs():
    meter = SegmentationMeter()
    with pytest.raises(ValueError):
        meter.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError):
        meter.update(t([[1.5]]), t([[1]]))
    with pytest.raises(ValueError):
        meter.update(t([[0.5]]), t([[0.5]]))
    with pytest.raises(ValueError):
        meter.update(t([[0.5]]), t([[1]]), names=["a", "b"])
    with pytest.raises(RuntimeError):
        meter.compute()
    assert len(meter.per_image()) == 0


def test_prediction_wrong_only_under_ignored_pixels_scores_iou_1():
    gt = t(GT_A)
    valid = torch.ones_like(gt)
    valid[..., 2:] = 0  # the right half is unlabelled
    prob = gt * 0.98 + 0.01
    prob[..., 2:] = 1 - prob[..., 2:]  # wrong everywhere there
    meter = SegmentationMeter()
    meter.update(prob, gt, names=["a"], valid=valid)
    got, row = meter.compute(), meter.per_image().iloc[0]
    assert got["iou"] == got["dice"] == got["accuracy"] == got["precision"] == got["recall"] == 1.0
    assert got["ece"] == pytest.approx(0.01, abs=1e-5) and got["mce"] == pytest.approx(0.01, abs=1e-5)
    assert row["iou"] == 1.0 and row["ece"] == pytest.approx(0.01, abs=1e-5)
    # fractions of the 8 labelled pixels, 4 of them foreground
    assert row["foreground_fraction"] == 0.5 and row["predicted_fraction"] == 0.5
    unmasked = SegmentationMeter()
    unmasked.update(prob, gt)
    assert unmasked.compute()["iou"] < 0.5


def test_all_valid_map_changes_nothing_and_an_unlabelled_image_has_no_scores():
    prob, gt = torch.cat([t(PROB_A), t(PROB_A).flip(-1)]), torch.cat([t(GT_A), t(GT_A)])
    plain, masked = SegmentationMeter(), SegmentationMeter()
    plain.update(prob, gt)
    masked.update(prob, gt, valid=torch.ones_like(gt))
    assert plain.compute() == masked.compute()
    pd.testing.assert_frame_equal(plain.per_image(), masked.per_image())

    valid = torch.ones_like(gt)
    valid[1] = 0  # the second image has no labelled pixel: it adds nothing and gets no scores
    masked = SegmentationMeter()
    masked.update(prob, gt, valid=valid)
    alone = SegmentationMeter()
    alone.update(prob[:1], gt[:1])
    assert masked.compute() == alone.compute()
    row = masked.per_image().iloc[1]
    assert row.drop(["name", "tp", "fp", "fn", "tn"]).isna().all() and (row[["tp", "fp", "fn", "tn"]] == 0).all()
    with pytest.raises(ValueError, match="valid must have the shape"):
        masked.update(prob, gt, valid=valid[:1])


class _ScaledImage(torch.nn.Module):
    """A "segmenter" whose logits are 20 x the image: probability ~1 where the image is +1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * x


class _ConstantTeacher(torch.nn.Module):
    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        return torch.zeros(image.shape[0])


def test_evaluation_skips_unlabelled_pixels():
    mask = np.zeros((12, 20), np.uint8)
    mask[2:6, 3:9] = 1
    valid = np.ones_like(mask)
    valid[:, 14:] = 0
    image = np.where(mask > 0, 1.0, -1.0).astype(np.float32)
    image[:, 14:] = 1.0  # predicted foreground where the label is unknown
    item = {"name": "a", "image": image, "mask": mask, "valid": valid, "instances": mask.astype(np.int32)}
    metrics, per_image, probs = evaluate_segmenter(_ScaledImage(), [item], 8, 0.25, 4, torch.device("cpu"))
    assert metrics["iou"] == 1.0 and per_image["iou"].tolist() == [1.0]
    # the object predicted where nothing is labelled is no false positive either
    assert metrics["object_f1"] == metrics["pq"] == 1.0 and per_image["objects_predicted"].tolist() == [1]
    unlabelled = {key: value for key, value in item.items() if key != "valid"}
    scores = evaluate_segmenter(_ScaledImage(), [unlabelled], 8, 0.25, 4, torch.device("cpu"))[0]
    assert scores["iou"] < 1.0 and scores["object_f1"] == pytest.approx(2 / 3) and scores["count_mae"] == 1.0
    # the teacher's true BCE per tile is over the tile's labelled pixels
    tiles = teacher_predictions(_ConstantTeacher(), [item], probs, 8, torch.device("cpu"), 3.0)
    prob, target = torch.from_numpy(probs[0])[None, None], torch.from_numpy(mask)[None, None].float()
    last = per_image_loss_of_prob(prob[..., 4:12, 12:20], target[..., 4:12, 12:20], 3.0,
                                  valid=torch.from_numpy(valid)[None, None, 4:12, 12:20].float())
    assert tiles["true"].iloc[-1] == pytest.approx(float(last[0]))
    assert tiles["true"].max() < 0.01  # wrong only where unlabelled


def test_teacher_agreement_known_values():
    pred = np.array([0.1, 0.2, 0.4, 0.3])
    true = np.array([0.2, 0.2, 0.5, 0.6])
    got = teacher_agreement(pred, true)
    assert got["mae"] == pytest.approx((0.1 + 0 + 0.1 + 0.3) / 4)
    # ranks pred 1,2,4,3 vs true 1.5,1.5,3,4
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, true).statistic)
    assert got["pearson"] == pytest.approx(np.corrcoef(pred, true)[0, 1])

    monotone = teacher_agreement(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 90.0]))
    assert monotone["spearman"] == pytest.approx(1.0)
    assert monotone["pearson"] < 1.0


def test_teacher_agreement_degenerate_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        const = teacher_agreement(np.array([0.3, 0.3, 0.3]), np.array([0.1, 0.2, 0.3]))
        single = teacher_agreement(np.array([0.3]), np.array([0.5]))
        empty = teacher_agreement(np.array([]), np.array([]))
        with_nan = teacher_agreement(np.array([0.1, np.nan, 0.3]), np.array([0.2, 0.5, 0.1]))
    assert const["mae"] == pytest.approx(0.1)
    assert math.isnan(const["spearman"]) and math.isnan(const["pearson"])
    assert single["mae"] == pytest.approx(0.2) and math.isnan(single["spearman"])
    assert all(math.isnan(v) for v in empty.values())
    assert with_nan["mae"] == pytest.approx((0.1 + 0.2) / 2)
    assert with_nan["spearman"] == pytest.approx(-1.0)


def test_instance_scores_by_hand():
    gt = np.zeros((6, 8), dtype=np.int32)
    gt[0:2, 0:2] = 7            # object A, 4 px
    gt[3:5, 4:6] = 9            # object B, 4 px
    pred = np.zeros_like(gt)
    pred[0:2, 0:2] = 1          # A exactly: IoU 1
    pred[3:5, 5:7] = 2          # half of B: overlap 2, union 6, IoU 1/3 < 0.5: not a match
    pred[5, 0] = 3              # a spurious object
    scores = instance_scores(pred, gt)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 1)
    assert scores["object_f1"] == pytest.approx(2 / (2 + 2 + 1))
    assert scores["pq"] == pytest.approx(1 / (1 + 1 + 0.5))
    # labels are names, not positions: renumbered GT is a perfect prediction
    assert instance_scores(np.where(gt > 0, 20 - gt, 0), gt) == {"tp": 2, "fp": 0, "fn": 0, "iou_sum": 2.0,
                                                                  "object_f1": 1.0, "pq": 1.0}
    # pixels outside valid belong to no object: hiding B and the spurious one leaves A alone
    valid = np.zeros_like(gt)
    valid[0:3] = 1
    assert instance_scores(pred, gt, valid)["object_f1"] == 1.0
    assert instance_scores(np.zeros_like(gt), np.zeros_like(gt))["pq"] == 1.0
    assert instance_scores(pred, np.zeros_like(gt))["object_f1"] == 0.0


def test_instances_from_probability_joins_diagonals_and_drops_small_objects():
    prob = np.zeros((6, 6), dtype=np.float32)
    prob[0, 0] = prob[1, 1] = 0.9             # diagonal neighbours: one object (8-connectivity)
    prob[4:6, 4:6] = 0.7                      # 4 px
    prob[0, 5] = 0.6                          # 1 px
    prob[3, 0] = 0.4                          # below the threshold
    labels = instances_from_probability(prob)
    assert labels.dtype == np.int32 and labels.max() == 3 and labels[0, 0] == labels[1, 1]
    kept = instances_from_probability(prob, min_size=2)
    assert kept.max() == 2 and kept[0, 5] == 0 and set(np.unique(kept)) == {0, 1, 2}


def test_instance_meter_pools_matches_over_images_and_merges():
    gt = np.zeros((10, 10), np.int32)
    gt[1:4, 1:4], gt[6:9, 6:9] = 1, 2
    perfect = (gt > 0).astype(np.float32)
    half = perfect.copy()
    half[6:9, 6:9] = 0  # misses object 2
    half[0, 9] = 1  # a one-pixel object, dropped by min_size 2
    whole, first, second = InstanceMeter(min_size=2), InstanceMeter(min_size=2), InstanceMeter(min_size=2)
    for meter, images in ((whole, [perfect, half]), (first, [perfect]), (second, [half])):
        for k, prob in enumerate(images):
            meter.update(prob, gt, name=f"i{k}")
    # pooled: tp 3, fp 0, fn 1 over both images
    assert whole.compute() == pytest.approx({"object_f1": 6 / 7, "pq": 3 / 3.5, "count_mae": 0.5})
    assert first.merge(second).compute() == pytest.approx(whole.compute())
    assert whole.per_image()["objects_predicted"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="different settings"):
        whole.merge(InstanceMeter(min_size=3))


def test_pixel_auroc_meter_matches_the_exact_auroc_and_merges():
    rng = np.random.default_rng(0)
    wrong = rng.random((40, 50)) < 0.2
    # predicted error higher on wrong pixels, with noise; a few scores beyond the top bin
    score = np.where(wrong, 1.5, 0.5) + rng.normal(0, 0.8, wrong.shape).clip(-0.5, None) + 0.5
    score[0, :3] = 9.0
    exact = stats.mannwhitneyu(score[wrong], score[~wrong]).statistic / (wrong.sum() * (~wrong).sum())
    meter = PixelAurocMeter()
    meter.update(score, wrong)
    assert meter.compute() == pytest.approx(exact, abs=2e-3)
    halves = PixelAurocMeter()
    halves.update(score[:20], wrong[:20])
    other = PixelAurocMeter()
    other.update(score[20:], wrong[20:])
    assert halves.merge(other) is halves and halves.compute() == pytest.approx(meter.compute())
    # ignored pixels are not seen; a perfect and an inverted ranking; one class only: NaN
    valid = np.zeros_like(wrong, dtype=np.uint8)
    valid[:, :10] = 1
    masked = PixelAurocMeter()
    masked.update(score, wrong, valid)
    assert masked.wrong.sum() + masked.right.sum() == valid.sum()
    perfect, inverted = PixelAurocMeter(), PixelAurocMeter()
    perfect.update(wrong * 3.0, wrong)
    inverted.update(~wrong * 3.0, wrong)
    assert perfect.compute() == 1.0 and inverted.compute() == 0.0
    lonely = PixelAurocMeter()
    lonely.update(score, np.zeros_like(wrong))
    assert math.isnan(lonely.compute())
