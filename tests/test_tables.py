"""Summary tables: numbers checked by hand, formatting, CSV validation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emkt.tables import (LONG_COLUMNS, REPORT, SELECTION, compare_students, kept_start_counts, paired_difference,
                         read_long_tables, split_rows, summarize, summary_table, to_markdown)

# Student's t quantiles t(0.975, df) from a printed table
T975 = {1: 12.706205, 2: 4.302653}


def long_frame() -> pd.DataFrame:
    rows = [
        ("student", "baseline", 0, "iou", 0.60),
        ("student", "baseline", 1, "iou", 0.62),
        ("student", "baseline", 2, "iou", 0.58),
        ("student", "expanded", 0, "iou", 0.65),
        ("student", "expanded", 1, "iou", 0.70),
        ("student", "expanded", 2, "iou", 0.60),
        ("student", "baseline", 0, "dice", 0.75),
        ("student", "expanded", 0, "dice", 0.80),
        ("teacher", "joint", 0, "mae", 0.05),
        ("teacher", "joint", 1, "mae", 0.07),
        ("teacher", "pretrained", 1, "spearman", 0.4),
    ]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def row(summary: pd.DataFrame, model: str, condition: str, metric: str) -> pd.Series:
    hit = summary[
        (summary.model == model) & (summary.condition == condition) & (summary.metric == metric)
    ]
    assert len(hit) == 1
    return hit.iloc[0]


def test_mean_sd_and_seed_columns():
    s = summarize(long_frame())
    assert list(s.columns) == [
        "dataset", "model", "condition", "metric", "n_seeds", "mean", "sd",
        "delta_mean", "delta_sd", "delta_ci_low", "delta_ci_high", "p_value", "n_pairs", "kept_start",
        "seed_0", "seed_1", "seed_2",
    ]  # fmt: skip
    assert (s["kept_start"] == "").all()  # no network here has kept_start rows
    base = row(s, "student", "baseline", "iou")
    assert base["mean"] == pytest.approx(0.60)
    # deviations 0, +0.02, -0.02 -> var = 0.0008/2
    assert base["sd"] == pytest.approx(0.02)
    assert base["n_seeds"] == 3
    assert [base["seed_0"], base["seed_1"], base["seed_2"]] == pytest.approx([0.60, 0.62, 0.58])
    # the reference student is not compared with itself
    assert base[["delta_mean", "delta_sd", "delta_ci_low", "delta_ci_high", "p_value"]].isna().all()
    assert base["n_pairs"] == 0

    exp = row(s, "student", "expanded", "iou")
    assert exp["mean"] == pytest.approx(0.65)
    assert exp["sd"] == pytest.approx(0.05)
    # paired differences by seed: 0.05, 0.08, 0.02 -> mean 0.05, sd 0.03
    assert exp["delta_mean"] == pytest.approx(0.05)
    assert exp["delta_sd"] == pytest.approx(0.03)
    assert exp["n_pairs"] == 3
    half = T975[2] * 0.03 / math.sqrt(3)  # = 0.074524
    assert exp["delta_ci_low"] == pytest.approx(0.05 - half, abs=1e-6)
    assert exp["delta_ci_high"] == pytest.approx(0.05 + half, abs=1e-6)
    # t = 0.05 / (0.03 / sqrt 3), t^2 = 25/3; with 2 df, two-sided p = 1 - t / sqrt(2 + t^2)
    assert exp["p_value"] == pytest.approx(1 - 5 / math.sqrt(31))  # 0.10197
    scipy_p = stats.ttest_rel([0.65, 0.70, 0.60], [0.60, 0.62, 0.58]).pvalue
    assert exp["p_value"] == pytest.approx(scipy_p)


def test_stable_order_of_first_appearance():
    s = summarize(long_frame())
    keys = list(s[["model", "condition", "metric"]].itertuples(index=False, name=None))
    assert keys == [
        ("student", "baseline", "iou"),
        ("student", "baseline", "dice"),
        ("student", "expanded", "iou"),
        ("student", "expanded", "dice"),
        ("teacher", "joint", "mae"),
        ("teacher", "pretrained", "spearman"),
    ]


def test_one_seed_and_teacher_rows():
    s = summarize(long_frame())
    dice = row(s, "student", "expanded", "dice")
    assert dice["n_seeds"] == 1 and dice["mean"] == pytest.approx(0.80)
    assert math.isnan(dice["sd"])
    # one paired seed: delta mean defined, no spread, no interval, no test
    assert dice["delta_mean"] == pytest.approx(0.05)
    assert dice[["delta_sd", "delta_ci_low", "delta_ci_high", "p_value"]].isna().all()
    assert dice["n_pairs"] == 1
    assert math.isnan(dice["seed_1"])

    mae = row(s, "teacher", "joint", "mae")
    assert mae["mean"] == pytest.approx(0.06)
    assert mae["sd"] == pytest.approx(math.sqrt(2 * 0.01**2))
    # no delta for the teacher
    assert mae[["delta_mean", "delta_ci_low", "p_value"]].isna().all() and mae["n_pairs"] == 0


def test_missing_reference_gives_nan_delta():
    long = long_frame()
    s = summarize(long[long.condition != "baseline"])
    exp = row(s, "student", "expanded", "iou")
    assert exp["mean"] == pytest.approx(0.65)
    assert math.isnan(exp["delta_mean"]) and math.isnan(exp["delta_sd"])
    assert math.isnan(exp["p_value"]) and exp["n_pairs"] == 0

    other = summarize(long, reference="expanded")
    base = row(other, "student", "baseline", "iou")
    assert base["delta_mean"] == pytest.approx(-0.05)
    assert other.attrs["reference"] == "expanded"


def test_delta_pairs_only_shared_seeds():
    long = long_frame()
    long = long[~((long.condition == "baseline") & (long.seed == 2))]
    exp = row(summarize(long), "student", "expanded", "iou")
    # pairs for seeds 0 and 1 only: 0.05, 0.08
    assert exp["delta_mean"] == pytest.approx(0.065)
    assert exp["delta_sd"] == pytest.approx(math.sqrt(2 * 0.015**2))
    assert exp["n_pairs"] == 2
    # sd / sqrt(2) = 0.015; with 1 df the t CDF is 1/2 + atan(t)/pi
    assert exp["delta_ci_high"] == pytest.approx(0.065 + T975[1] * 0.015, abs=1e-6)
    assert exp["p_value"] == pytest.approx(1 - 2 * math.atan(0.065 / 0.015) / math.pi)

    # a NaN value counts as missing, like an absent row
    long = long_frame()
    missing = (long.condition == "baseline") & (long.seed == 2) & (long.metric == "iou")
    long.loc[missing, "value"] = np.nan
    assert row(summarize(long), "student", "expanded", "iou")["n_pairs"] == 2


def test_identical_differences_give_no_test():
    # differences 0.1 each, equal only up to rounding (0.7 - 0.6 != 0.8 - 0.7 in floats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn about catastrophic cancellation
        got = paired_difference(np.array([0.7, 0.8, 0.3]), np.array([0.6, 0.7, 0.2]))
        zero = paired_difference(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    assert got["delta_mean"] == pytest.approx(0.1)
    assert got["delta_sd"] == 0.0
    assert got["delta_ci_low"] == got["delta_ci_high"] == got["delta_mean"]
    assert math.isnan(got["p_value"]) and got["n_pairs"] == 3
    assert zero["delta_mean"] == zero["delta_sd"] == zero["delta_ci_low"] == 0.0
    assert math.isnan(zero["p_value"])


def test_paired_difference_small_cases():
    none = paired_difference(np.array([0.5, np.nan]), np.array([np.nan, 0.4]))
    assert none["n_pairs"] == 0 and math.isnan(none["delta_mean"])
    # a genuine small spread is tested, not taken for rounding
    close = paired_difference(np.array([0.601, 0.602, 0.600]), np.array([0.6, 0.6, 0.6]))
    assert close["delta_sd"] == pytest.approx(0.001) and 0 < close["p_value"] < 1


def reference_frame() -> pd.DataFrame:
    long = long_frame()
    rows = [
        # ensemble - baseline by seed: 0.04, 0.06, 0.08 -> mean 0.06, sd 0.02
        ("reference", "ensemble", 0, "iou", 0.64),
        ("reference", "ensemble", 1, "iou", 0.68),
        ("reference", "ensemble", 2, "iou", 0.66),
        ("reference", "unet", 1, "iou", 0.52),
        ("reference", "baseline", 0, "iou", 0.70),  # a reference network named like the student
        ("teacher", "baseline", 0, "iou", 0.9),  # never compared
    ]
    return pd.concat([long, pd.DataFrame(rows, columns=LONG_COLUMNS)], ignore_index=True)


def test_reference_models_compared_with_the_baseline_student():
    s = summarize(reference_frame())
    ens = row(s, "reference", "ensemble", "iou")
    assert ens["delta_mean"] == pytest.approx(0.06)
    assert ens["delta_sd"] == pytest.approx(0.02)
    half = T975[2] * 0.02 / math.sqrt(3)
    assert [ens["delta_ci_low"], ens["delta_ci_high"]] == pytest.approx([0.06 - half, 0.06 + half])
    # t = 0.06 / (0.02 / sqrt 3), t^2 = 27 -> p = 1 - sqrt(27 / 29)
    assert ens["p_value"] == pytest.approx(1 - math.sqrt(27 / 29))

    unet = row(s, "reference", "unet", "iou")
    assert unet["delta_mean"] == pytest.approx(-0.10) and unet["n_pairs"] == 1
    ref_base = row(s, "reference", "baseline", "iou")
    assert ref_base["delta_mean"] == pytest.approx(0.10) and ref_base["n_pairs"] == 1
    assert row(s, "teacher", "baseline", "iou")["n_pairs"] == 0
    assert math.isnan(row(s, "student", "baseline", "iou")["delta_mean"])


def test_duplicates_rejected():
    long = pd.concat([long_frame(), long_frame().iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        summarize(long)


def test_markdown_contains_formatted_values():
    text = to_markdown(summarize(long_frame()), digits=3)
    table, note = text.strip().split("\n\n")
    lines = table.splitlines()
    assert lines[0] == (
        "| model | condition | metric | mean ± sd | Δ vs baseline | p (paired t) | seed values |"
    )
    assert len(lines) == 2 + 6
    assert "| student | baseline | iou | 0.600 ± 0.020 | – | – | 0.600, 0.620, 0.580 |" in text
    # CI 0.05 -/+ 0.0745 = [-0.0245, 0.1245]; p = 0.10197
    assert (
        "| student | expanded | iou | 0.650 ± 0.050 | +0.050 ± 0.030 [-0.025, +0.125] | 0.102 "
        "| 0.650, 0.700, 0.600 |"
    ) in text
    assert "| student | expanded | dice | 0.800 | +0.050 | 1 seed: no test | 0.800, –, – |" in text
    assert "| teacher | joint | mae | 0.060 ± 0.014 | – | – | 0.050, 0.070, – |" in text
    assert "0.6500 ± 0.0500 | +0.0500 ± 0.0300 [-0.0245, +0.1245]" in to_markdown(
        summarize(long_frame()), digits=4
    )
    assert note.splitlines() == [
        "Test split: 1–3 seeds (by row), images not counted (no per-image pixel counts).",
        "Δ: paired difference to the baseline student over seeds (mean ± sd [95% CI, t distribution]); "
        "p: two-sided paired t-test. n seeds: 1–3 (by row). "
        "This interval is over training seeds: how much the difference depends on the seed.",
    ]


def test_markdown_p_values_and_no_test_cases():
    long = reference_frame()
    # identical differences for dice: expanded - baseline = 0.05 on seeds 0 and 1
    extra = [("student", "baseline", 1, "dice", 0.70), ("student", "expanded", 1, "dice", 0.75)]
    long = pd.concat([long, pd.DataFrame(extra, columns=LONG_COLUMNS)], ignore_index=True)
    summary = summarize(long)
    text = to_markdown(summary)
    assert (
        "| reference | ensemble | iou | 0.660 ± 0.020 | +0.060 ± 0.020 [+0.010, +0.110] | 0.035 |"
    ) in text
    assert "| reference | unet | iou | 0.520 | -0.100 | 1 seed: no test | –, 0.520, – |" in text
    assert "| teacher | baseline | iou | 0.900 | – | – |" in text
    assert "| +0.050 ± 0.000 [+0.050, +0.050] | sd 0: no test |" in text

    # tiny p-values are written as a bound; a missing reference leaves no comparison
    tiny = summary.assign(p_value=np.where(summary["p_value"].notna(), 1e-5, np.nan))
    assert "| <0.001 |" in to_markdown(tiny)
    alone = summarize(long[long.condition != "baseline"])
    assert "n seeds: none." in to_markdown(alone)
    assert "| student | expanded | iou | 0.650 ± 0.050 | – | – |" in to_markdown(alone)


def test_read_long_tables(tmp_path):
    long = long_frame()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    long.iloc[:5].assign(extra="x").to_csv(a, index=False)
    long.iloc[5:].to_csv(b, index=False)
    got = read_long_tables([a, str(b)])
    assert list(got.columns) == ["dataset", *LONG_COLUMNS] and (got["dataset"] == "test").all()
    pd.testing.assert_frame_equal(got[LONG_COLUMNS], long, check_dtype=False)
    assert list(read_long_tables([]).columns) == ["dataset", *LONG_COLUMNS]


def test_read_long_tables_bad_columns_names_file(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad_metrics.csv"
    long_frame().to_csv(good, index=False)
    long_frame().rename(columns={"metric": "name"}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad_metrics.csv") as err:
        read_long_tables([good, bad])
    assert "metric" in str(err.value)

    notnum = tmp_path / "notnum.csv"
    long_frame().assign(value="oops").to_csv(notnum, index=False)
    with pytest.raises(ValueError, match="notnum.csv"):
        read_long_tables([notnum])


def test_each_dataset_is_summarised_and_compared_on_its_own():
    test = long_frame()
    external = long_frame().assign(dataset="other_lab", value=lambda f: f["value"] - 0.1)
    # the external set's expanded student is compared with the baseline on the same set
    external.loc[(external.condition == "expanded") & (external.metric == "iou"), "value"] += 0.1
    summary = summarize(pd.concat([test, external], ignore_index=True))
    assert summary["dataset"].tolist()[:1] == ["test"] and set(summary["dataset"]) == {"test", "other_lab"}
    outside = summary[summary["dataset"] == "other_lab"].set_index(["condition", "metric"])
    assert outside.loc[("baseline", "iou"), "mean"] == pytest.approx(0.50)
    assert outside.loc[("expanded", "iou"), "delta_mean"] == pytest.approx(0.15)
    inside = summary[summary["dataset"] == "test"].set_index(["condition", "metric"])
    assert inside.loc[("expanded", "iou"), "delta_mean"] == pytest.approx(0.05)
    text = to_markdown(summary)
    assert text.index("### Test split") < text.index("### External set: other_lab")
    # a note under each table
    assert text.count("| model | condition | metric |") == 2 and text.count("Δ: paired difference") == 2
    assert "\n\nExternal set: other_lab: 1–3 seeds (by row)" in text


def test_compare_students_pairs_chosen_rows_with_another_reference():
    long = pd.DataFrame(
        [("student", condition, seed, metric, value + 0.01 * seed)
         for condition, value in (("baseline", 0.5), ("joint", 0.6), ("expanded_anchored", 0.62), ("other", 0.9))
         for seed in (0, 1, 2) for metric in ("iou", "ece")]
        + [("teacher", "joint", 0, "mae", 0.1)], columns=LONG_COLUMNS)
    table = compare_students(long, ["expanded_anchored"], ["iou"], reference="joint")
    assert list(zip(table["condition"], table["metric"])) == [("joint", "iou"), ("expanded_anchored", "iou")]
    anchored = row(table, "student", "expanded_anchored", "iou")
    assert anchored["delta_mean"] == pytest.approx(0.02) and anchored["n_pairs"] == 3
    assert "Δ vs joint" in to_markdown(table)


# --- selection vs report, kept start, bootstrap over images (issue 16) ---

PER_IMAGE_COLUMNS = ["dataset", "model", "condition", "seed", "name", "tp", "fp", "fn"]


def split_frame() -> pd.DataFrame:
    """Validation and test rows of two students and a fine-tuned variant, two seeds."""
    rows = []
    for dataset, shift in (("val", 0.1), ("test", 0.0)):
        for seed in (0, 1):
            rows += [
                (dataset, "student", "baseline", seed, "iou", 0.6 + shift),
                (dataset, "student", "expanded_anchored", seed, "iou", 0.7 + shift + 0.02 * seed),
                (dataset, "student", "baseline", seed, "dice", 0.7 + shift),
                (dataset, "student", "expanded_anchored", seed, "dice", 0.8 + shift),
            ]
    # kept_start: written on the validation split only; seed 1 kept its start
    rows += [("val", "student", "expanded_anchored", 0, "kept_start", 0.0),
             ("val", "student", "expanded_anchored", 1, "kept_start", 1.0)]
    rows += [("test", "teacher", "joint", 0, "mae", 0.05)]
    return pd.DataFrame(rows, columns=["dataset", *LONG_COLUMNS])


def split_per_image() -> pd.DataFrame:
    """Test-split pixel counts of images a and b (see tests/test_bootstrap.py): per seed
    expanded_anchored - baseline is +0.2 IoU on a alone and 0 on b alone."""
    net = {"a": (8, 1, 1), "b": (5, 3, 2)}
    ref = {"a": (6, 2, 2), "b": (5, 2, 3)}
    rows = [("test", "student", condition, seed, name, *counts[name])
            for condition, counts in (("baseline", ref), ("expanded_anchored", net))
            for seed in (0, 1) for name in ("a", "b")]
    return pd.DataFrame(rows, columns=PER_IMAGE_COLUMNS)


def test_split_rows_keep_validation_out_of_the_report():
    long = split_frame()
    assert set(split_rows(long, SELECTION)["dataset"]) == {"val"}
    assert "val" not in set(split_rows(long, REPORT)["dataset"])
    assert len(split_rows(long, SELECTION)) + len(split_rows(long, REPORT)) == len(long)
    no_column = long.drop(columns="dataset")
    assert split_rows(no_column, SELECTION).empty and len(split_rows(no_column, REPORT)) == len(long)
    with pytest.raises(ValueError, match="purpose"):
        split_rows(long, "val")


def test_report_and_selection_tables_never_mix():
    long, per_image = split_frame(), split_per_image()
    report = summary_table(long, per_image, REPORT, replicates=2000)
    selection = summary_table(long, per_image, SELECTION, replicates=2000)
    assert set(report["dataset"]) == {"test"} and set(selection["dataset"]) == {"val"}
    # seed 0: 0.70 - 0.60, seed 1: 0.72 - 0.60 on the test split; +0.1 on both on val
    assert row(report, "student", "expanded_anchored", "iou")["delta_mean"] == pytest.approx(0.11)
    assert row(selection, "student", "expanded_anchored", "iou")["delta_mean"] == pytest.approx(0.11)
    assert row(selection, "student", "expanded_anchored", "iou")["mean"] == pytest.approx(0.81)
    report_md, selection_md = to_markdown(report), to_markdown(selection)
    assert report_md.splitlines()[0] == (
        "Report (test split): for what was chosen beforehand; never used to choose.")
    assert selection_md.splitlines()[0] == "Selection (validation split): choose defaults here."
    assert "\n\nValidation split: 2 seeds, images not counted" in selection_md
    assert "\n\nTest split: 1–2 seeds (by row), 2 images." in report_md  # the teacher: 1 seed
    # an external set is part of the report and named in its first line
    external = split_frame().query("dataset == 'test'").assign(dataset="other_lab")
    both = summary_table(pd.concat([long, external]), per_image, REPORT, replicates=10)
    assert to_markdown(both).startswith("Report (test split and external sets): ")


def test_kept_start_is_a_count_not_a_compared_metric():
    long = split_frame()
    selection = summary_table(long, split_per_image(), SELECTION, replicates=10)
    kept = row(selection, "student", "expanded_anchored", "kept_start")
    assert kept["mean"] == pytest.approx(0.5)  # the CSV keeps the 0/1 per seed
    assert math.isnan(kept["delta_mean"]) and kept["n_pairs"] == 0  # but no Δ to the baseline's
    # every row of the network says k/n; in the report too, although the flag is on val only
    assert set(selection.loc[selection.condition == "expanded_anchored", "kept_start"]) == {"1/2"}
    report = summary_table(long, split_per_image(), REPORT, replicates=10)
    assert set(report.loc[report.condition == "expanded_anchored", "kept_start"]) == {"1/2"}
    assert set(report.loc[report.condition == "baseline", "kept_start"]) == {""}
    for text in (to_markdown(selection), to_markdown(report)):
        assert "| student | expanded_anchored (kept start: 1/2) | iou |" in text
        assert "| kept_start |" not in text and "0.500 ± 0.707" not in text
        assert "kept start: k/n: k of the n seeds kept their starting weights" in text
    # a seed repeated on several data sets counts once; kept if any row says so
    twice = pd.concat([long, long[long.metric == "kept_start"].assign(dataset="test", value=[1.0, 1.0])])
    assert kept_start_counts(twice) == {("student", "expanded_anchored"): (2, 2)}
    # the expansion table (another reference, chosen metrics) shows it too
    expansion = summary_table(long, split_per_image(), SELECTION, reference="baseline", replicates=10,
                              conditions=["expanded_anchored"], metrics=["iou"])
    assert "expanded_anchored (kept start: 1/2)" in to_markdown(expansion)


def test_image_bootstrap_columns_beside_the_seed_interval():
    report = summary_table(split_frame(), split_per_image(), REPORT, replicates=2000)
    iou = row(report, "student", "expanded_anchored", "iou")
    # both seeds: +0.2 on a alone, 0 on b alone (hand-worked in tests/test_bootstrap.py)
    assert (iou["boot_ci_low"], iou["boot_ci_high"]) == pytest.approx((0.0, 0.2), abs=1e-12)
    assert iou["n_images"] == 2
    dice = row(report, "student", "expanded_anchored", "dice")
    assert (dice["boot_ci_low"], dice["boot_ci_high"]) == pytest.approx((0.0, 16 / 18 - 12 / 16), abs=1e-12)
    base = row(report, "student", "baseline", "iou")
    assert math.isnan(base["boot_ci_low"]) and base["n_images"] == 2  # the reference: images, no Δ
    assert row(report, "teacher", "joint", "mae")["n_images"] == 0
    # the CSV's columns: the bootstrap and kept start before the per-seed values
    assert list(report.columns)[-6:] == ["boot_ci_low", "boot_ci_high", "n_images", "kept_start",
                                         "seed_0", "seed_1"]
    text = to_markdown(report)
    assert ("| model | condition | metric | mean ± sd | Δ vs baseline | p (paired t) | Δ 95% CI (images) "
            "| seed values |") in text
    # t = 0.11 / (0.01 * sqrt 2 / sqrt 2) = 11 with 1 df: p = 1 - 2 atan(11) / pi = 0.058
    assert "| +0.110 ± 0.014 [-0.017, +0.237] | 0.058 | [+0.000, +0.200] | 0.700, 0.720 |" in text
    assert "Δ 95% CI (images): paired bootstrap over the 2 images (2000 replicates;" in text
    assert "This interval is over training seeds" in text


def test_no_per_image_counts_leave_the_bootstrap_out():
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in PER_IMAGE_COLUMNS})
    report = summary_table(split_frame(), empty, REPORT, replicates=10)
    assert report["boot_ci_low"].isna().all() and (report["n_images"] == 0).all()
    text = to_markdown(report)
    assert "images not counted (no per-image pixel counts)" in text
    assert "Δ 95% CI (images): none, no per-image pixel counts for this data set." in text
    # counts for the test split only: an external set gets no interval, the test split does
    external = split_frame().query("dataset == 'test'").assign(dataset="other_lab")
    mixed = summary_table(pd.concat([split_frame(), external]), split_per_image(), REPORT, replicates=10)
    outside = mixed[mixed.dataset == "other_lab"]
    assert outside["boot_ci_low"].isna().all()
    assert not math.isnan(row(mixed[mixed.dataset == "test"], "student", "expanded_anchored", "iou")["boot_ci_low"])


def test_no_validation_rows_give_an_empty_selection_table():
    long = split_frame().query("dataset != 'val'")
    selection = summary_table(long, split_per_image(), SELECTION, replicates=10)
    assert selection.empty
    assert to_markdown(selection) == (
        "Selection (validation split): choose defaults here.\n\nNo validation split results.\n")


def test_image_bootstrap_needs_counts_for_every_paired_seed():
    # seed 1's counts of the expanded student are missing (an older per-image table): its
    # seed interval pairs 2 seeds, so a bootstrap over seed 0 alone is not put beside it
    per_image = split_per_image()
    per_image = per_image[~((per_image.condition == "expanded_anchored") & (per_image.seed == 1))]
    report = summary_table(split_frame(), per_image, REPORT, replicates=10)
    iou = row(report, "student", "expanded_anchored", "iou")
    assert iou["n_pairs"] == 2 and math.isnan(iou["boot_ci_low"]) and math.isnan(iou["boot_ci_high"])
