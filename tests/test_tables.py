"""Summary tables: numbers checked by hand, formatting, CSV validation."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from emkt.tables import LONG_COLUMNS, read_long_tables, summarize, to_markdown


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
        "model", "condition", "metric", "n_seeds", "mean", "sd",
        "delta_mean", "delta_sd", "seed_0", "seed_1", "seed_2",
    ]  # fmt: skip
    base = row(s, "student", "baseline", "iou")
    assert base["mean"] == pytest.approx(0.60)
    # deviations 0, +0.02, -0.02 -> var = 0.0008/2
    assert base["sd"] == pytest.approx(0.02)
    assert base["n_seeds"] == 3
    assert [base["seed_0"], base["seed_1"], base["seed_2"]] == pytest.approx([0.60, 0.62, 0.58])
    assert math.isnan(base["delta_mean"]) and math.isnan(base["delta_sd"])

    exp = row(s, "student", "expanded", "iou")
    assert exp["mean"] == pytest.approx(0.65)
    assert exp["sd"] == pytest.approx(0.05)
    # paired differences by seed: 0.05, 0.08, 0.02 -> mean 0.05, sd 0.03
    assert exp["delta_mean"] == pytest.approx(0.05)
    assert exp["delta_sd"] == pytest.approx(0.03)


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
    # one paired seed: delta mean defined, no spread
    assert dice["delta_mean"] == pytest.approx(0.05)
    assert math.isnan(dice["delta_sd"])
    assert math.isnan(dice["seed_1"])

    mae = row(s, "teacher", "joint", "mae")
    assert mae["mean"] == pytest.approx(0.06)
    assert mae["sd"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert math.isnan(mae["delta_mean"])  # no delta for the teacher


def test_missing_reference_gives_nan_delta():
    long = long_frame()
    s = summarize(long[long.condition != "baseline"])
    exp = row(s, "student", "expanded", "iou")
    assert exp["mean"] == pytest.approx(0.65)
    assert math.isnan(exp["delta_mean"]) and math.isnan(exp["delta_sd"])

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


def test_duplicates_rejected():
    long = pd.concat([long_frame(), long_frame().iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        summarize(long)


def test_markdown_contains_formatted_values():
    text = to_markdown(summarize(long_frame()), digits=3)
    lines = text.strip().splitlines()
    assert lines[0] == "| model | condition | metric | mean ± sd | Δ vs baseline | seed values |"
    assert len(lines) == 2 + 6
    assert "| student | baseline | iou | 0.600 ± 0.020 | – | 0.600, 0.620, 0.580 |" in text
    assert "| student | expanded | iou | 0.650 ± 0.050 | +0.050 ± 0.030 | 0.650, 0.700, 0.600 |" in text
    assert "| student | expanded | dice | 0.800 | +0.050 | 0.800, –, – |" in text
    assert "| teacher | joint | mae | 0.060 ± 0.014 | – | 0.050, 0.070, – |" in text
    assert "0.6500 ± 0.0500" in to_markdown(summarize(long_frame()), digits=4)


def test_read_long_tables(tmp_path):
    long = long_frame()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    long.iloc[:5].assign(extra="x").to_csv(a, index=False)
    long.iloc[5:].to_csv(b, index=False)
    got = read_long_tables([a, str(b)])
    assert list(got.columns) == LONG_COLUMNS
    pd.testing.assert_frame_equal(got, long, check_dtype=False)
    assert list(read_long_tables([]).columns) == LONG_COLUMNS


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
