"""Paired bootstrap over images: hand-worked intervals, pairing of images and seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emkt.bootstrap import count_arrays, paired_image_bootstrap, pooled_metric, read_per_image_tables

# tp, fp, fn of two images a and b, one seed: the network and the reference it is compared with
#   a: IoU 8/10 = 0.8 vs 6/10 = 0.6 -> +0.2;   Dice 16/18 vs 12/16 -> 8/9 - 3/4 = +5/36
#   b: IoU 5/10 = 0.5 vs 5/10 = 0.5 ->  0;     Dice 10/15 vs 10/15 -> 0
#   a + b pooled: IoU 13/20 vs 11/20 -> +0.1
NET = {"a": (8, 1, 1), "b": (5, 3, 2)}
REF = {"a": (6, 2, 2), "b": (5, 2, 3)}


def arrays(*per_seed: dict) -> np.ndarray:
    return np.array([[seed[name] for name in ("a", "b")] for seed in per_seed], dtype=np.float64)


def test_pooled_metric_formulas():
    assert pooled_metric("iou", 8, 1, 1) == pytest.approx(0.8)
    assert pooled_metric("dice", 8, 1, 1) == pytest.approx(16 / 18)
    # nothing predicted or labelled: undefined, not 0 or 1
    assert math.isnan(pooled_metric("iou", 0, 0, 0))
    with pytest.raises(ValueError, match="ece"):
        pooled_metric("ece", 1, 1, 1)


def test_two_images_give_the_single_image_differences():
    # With two images the resamples are {a,a}, {a,b}, {b,b} with probabilities 1/4, 1/2, 1/4;
    # {a,a} pools to a alone. The 2.5% and 97.5% percentiles (of about 500 replicates each at
    # the ends) are therefore exactly the differences on b alone and on a alone.
    low, high = paired_image_bootstrap(arrays(NET), arrays(REF), "iou", replicates=2000, seed=1)
    assert (low, high) == pytest.approx((0.0, 0.2), abs=1e-12)
    low, high = paired_image_bootstrap(arrays(NET), arrays(REF), "dice", replicates=2000, seed=1)
    assert (low, high) == pytest.approx((0.0, 16 / 18 - 12 / 16), abs=1e-12)
    # reproducible from its seed
    assert paired_image_bootstrap(arrays(NET), arrays(REF), "iou", 500, seed=3) == \
        paired_image_bootstrap(arrays(NET), arrays(REF), "iou", 500, seed=3)


def test_the_same_difference_on_every_image_collapses_the_interval():
    # every image's counts are a multiple of one image's: any resample pools to 0.8 vs 0.6
    net = np.array([[[8 * k, 1 * k, 1 * k] for k in (1, 2, 3, 5)]], dtype=np.float64)
    ref = np.array([[[6 * k, 2 * k, 2 * k] for k in (1, 2, 3, 5)]], dtype=np.float64)
    low, high = paired_image_bootstrap(net, ref, "iou", replicates=300)
    assert low == pytest.approx(0.2, abs=1e-12) and high == pytest.approx(0.2, abs=1e-12)


def test_seeds_share_the_resampled_images_and_are_averaged():
    # seed 1: a: 0.5 vs 0.5 -> 0; b: 0.9 vs 0.5 -> +0.4; a + b: 14/20 vs 10/20 -> +0.2
    seed1_net = {"a": (5, 3, 2), "b": (9, 0, 1)}
    seed1_ref = {"a": (5, 2, 3), "b": (5, 3, 2)}
    # seed average per resample: {a,a} (0.2 + 0) / 2 = 0.1; {a,b} (0.1 + 0.2) / 2 = 0.15;
    # {b,b} (0 + 0.4) / 2 = 0.2. Resampling the seeds independently would also give
    # (0 + 0) / 2 = 0 and (0.2 + 0.4) / 2 = 0.3, each with probability 1/16, beyond 2.5%.
    low, high = paired_image_bootstrap(arrays(NET, seed1_net), arrays(REF, seed1_ref), "iou", 2000, seed=0)
    assert (low, high) == pytest.approx((0.1, 0.2), abs=1e-12)


def test_a_seed_with_an_undefined_metric_is_left_out_of_that_average():
    # seed 1 has an image with no foreground anywhere: its {b,b} resamples are undefined,
    # so those replicates average seed 0 alone (0.0) instead of becoming NaN
    seed1 = {"a": (8, 1, 1), "b": (0, 0, 0)}
    low, high = paired_image_bootstrap(arrays(NET, seed1), arrays(REF, seed1), "iou", 2000)
    # {a,a}: (0.2 + 0) / 2 = 0.1; {b,b}: seed 0 only -> 0; {a,b}: (0.1 + 0) / 2 = 0.05
    assert (low, high) == pytest.approx((0.0, 0.1), abs=1e-12)
    assert all(math.isnan(x) for x in paired_image_bootstrap(np.zeros((0, 2, 3)), np.zeros((0, 2, 3)), "iou"))
    with pytest.raises(ValueError, match="shape"):
        paired_image_bootstrap(np.zeros((1, 2, 3)), np.zeros((1, 3, 3)), "iou")


def per_image_frame() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for name in ("b", "a"):  # another order than the reference's
            rows.append(("test", "student", "expanded", seed, name, *NET[name], 100))
        for name in ("a", "b", "c"):  # c: scored for the reference only
            rows.append(("test", "student", "baseline", seed, name, *REF.get(name, (1, 1, 1)), 100))
    rows.append(("test", "student", "baseline", 2, "a", 1, 1, 1, 100))  # seed 2: reference only
    return pd.DataFrame(rows, columns=["dataset", "model", "condition", "seed", "name", "tp", "fp", "fn", "tn"])


def test_count_arrays_pair_images_by_name_and_shared_seeds():
    mine, theirs, n = count_arrays(per_image_frame(), "test", ("student", "expanded"), ("student", "baseline"))
    assert n == 2 and mine.shape == theirs.shape == (2, 2, 3)
    np.testing.assert_array_equal(mine[0], [NET["a"], NET["b"]])
    np.testing.assert_array_equal(theirs[1], [REF["a"], REF["b"]])
    _, _, none = count_arrays(per_image_frame(), "other_lab", ("student", "expanded"), ("student", "baseline"))
    assert none == 0


def test_read_per_image_tables_skips_files_without_counts(tmp_path):
    new, old = tmp_path / "new_per_image.csv", tmp_path / "old_per_image.csv"
    per_image_frame().assign(iou=0.5).to_csv(new, index=False)
    pd.DataFrame({"name": ["a"], "iou": [0.5], "dice": [0.6]}).to_csv(old, index=False)
    table, skipped = read_per_image_tables([new, old])
    assert skipped == [str(old)]
    assert list(table.columns) == ["dataset", "model", "condition", "seed", "name", "tp", "fp", "fn"]
    assert len(table) == len(per_image_frame())
    empty, skipped = read_per_image_tables([old])
    assert empty.empty and skipped == [str(old)]

    twice = tmp_path / "twice_per_image.csv"
    pd.concat([per_image_frame()] * 2).to_csv(twice, index=False)
    with pytest.raises(ValueError, match="twice_per_image.csv"):
        read_per_image_tables([twice])
