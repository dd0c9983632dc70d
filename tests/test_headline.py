"""The headline table: numbers rounded for people, checked by hand; what it shows and leaves out."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from emkt.headline import decimals, format_count, format_mean_sd, headline_markdown
from emkt.tables import REPORT, summary_table

COLUMNS = ["dataset", "model", "condition", "seed", "metric", "value"]


@pytest.mark.parametrize("x, places", [(0.593, 3), (0.0425, 4), (147.3, 0), (98.9, 1), (1234.5, -1), (0.0, 3),
                                       (-0.012, 4), (math.nan, 3)])
def test_decimals_give_three_significant_digits(x, places):
    assert decimals(x) == places


@pytest.mark.parametrize("mean, sd, text", [
    (0.5934, 0.0041, "0.593 ± 0.004"),
    (147.3, 73.4, "147 ± 73"),  # images/s: 3 digits of the mean, the sd to the same place
    (98.94, 46.12, "98.9 ± 46.1"),
    (12345.6, 73.0, "12,300 ± 100"),  # rounded to hundreds, with a thousands separator
    (0.0425, 0.00049, "0.0425 ± 0.0005"),
    (0.5, math.nan, "0.500"),  # one seed: no spread
    (math.nan, math.nan, "–"),
])  # fmt: skip
def test_mean_sd_to_three_significant_digits(mean, sd, text):
    assert format_mean_sd(mean, sd) == text


@pytest.mark.parametrize("mean, sd, text", [
    (182001.0, 0.0, "182,001"),  # not "182001.000 ± 0.000"
    (182001.0, math.nan, "182,001"),
    (1500.4, 12.6, "1,500 ± 13"),
    (950.0, 0.2, "950"),  # an sd that rounds to 0 is left out
    (math.nan, 0.0, "–"),
])  # fmt: skip
def test_counts_whole_with_thousands_separators(mean, sd, text):
    assert format_count(mean, sd) == text


def networks(dataset: str, shift: float = 0.0) -> list[tuple]:
    """Three seeds of two students and a reference (listed first), a teacher, all metrics."""
    rows = []
    for seed, (base, expanded, speed) in enumerate([(0.60, 0.65, 100.0), (0.62, 0.70, 147.0), (0.58, 0.60, 194.0)]):
        for model, condition, iou in (("reference", "ensemble", 0.8), ("student", "baseline", base),
                                      ("student", "expanded", expanded)):  # fmt: skip
            values = {"iou": iou + shift, "dice": 0.75, "object_f1": 0.5, "pq": 0.4, "ece": 0.0425,
                      "parameters": 182001.0, "images_per_s": speed, "peak_memory_mb": 300.0}
            if condition == "expanded":
                values["kept_start"] = float(seed == 0)
            rows += [(dataset, model, condition, seed, metric, value) for metric, value in values.items()]
        rows.append((dataset, "teacher", "joint", seed, "mae", 0.05))
    return rows


def per_image(images: int = 4) -> pd.DataFrame:
    # the same counts on every image: every bootstrap replicate gives the same difference,
    # IoU 13 / (13 + 3 + 4) - 3 / (3 + 1 + 1) = 0.65 - 0.6 = +0.05
    rows = [("test", model, condition, seed, f"image_{i}", *counts)
            for model, condition, counts in (("student", "baseline", (3, 1, 1)), ("student", "expanded", (13, 3, 4)),
                                             ("reference", "ensemble", (4, 1, 0)))
            for seed in range(3) for i in range(images)]  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "model", "condition", "seed", "name", "tp", "fp", "fn"])


def headline(long_rows: list[tuple], counts: pd.DataFrame | None = None) -> str:
    long = pd.DataFrame(long_rows, columns=COLUMNS)
    counts = per_image().iloc[:0] if counts is None else counts
    return headline_markdown(summary_table(long, counts, REPORT, replicates=50))


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_headline_rows_and_numbers():
    # the validation split and an external set carry other numbers: neither may leak in
    text = headline(networks("val", shift=0.3) + networks("other_lab", shift=-0.2) + networks("test"), per_image())
    header, rule, *rows = table_rows(text)
    assert header == ["kind", "network", "IoU", "Dice", "object F1", "PQ", "ECE", "parameters", "images/s",
                      "Δ IoU vs baseline [95% CI]", "Δ 95% CI (images)", "kept start"]
    assert len(rule) == len(header) and all(len(row) == len(header) for row in rows)
    # students first, then the reference; no teacher row
    assert [row[:2] for row in rows] == [["student", "baseline"], ["student", "expanded"], ["reference", "ensemble"]]
    base, expanded, ensemble = (dict(zip(header, row)) for row in rows)
    # IoU 0.60, 0.62, 0.58: mean 0.6, sd 0.02; speed 100, 147, 194: mean 147, sd 47
    assert base["IoU"] == "0.600 ± 0.020" and base["images/s"] == "147 ± 47"
    assert base["parameters"] == "182,001" and base["ECE"] == "0.0425 ± 0.0000" and base["Dice"] == "0.750 ± 0.000"
    assert base["Δ IoU vs baseline [95% CI]"] == base["Δ 95% CI (images)"] == "–" and base["kept start"] == ""
    # expanded: IoU 0.65, 0.70, 0.60 (sd 0.05); differences 0.05, 0.08, 0.02: mean 0.05, sd 0.03,
    # half width t(0.975, 2) 0.03 / sqrt 3 = 4.302653 * 0.017321 = 0.074524
    assert expanded["IoU"] == "0.650 ± 0.050"
    assert expanded["Δ IoU vs baseline [95% CI]"] == "+0.050 [-0.025, +0.125]"
    assert expanded["Δ 95% CI (images)"] == "[+0.050, +0.050]"
    assert expanded["kept start"] == "1/3"  # kept its start on seed 0 only
    assert ensemble["IoU"] == "0.800 ± 0.000" and ensemble["kept start"] == ""
    # differences 0.2, 0.18, 0.22: mean 0.2, sd 0.02, half width 4.302653 * 0.02 / sqrt 3 = 0.049683
    assert ensemble["Δ IoU vs baseline [95% CI]"] == "+0.200 [+0.150, +0.250]"
    lines = text.splitlines()
    assert lines[0].startswith("Test split, 3 seeds, 4 test images; mean ± sd over seeds.")
    assert "results/tables/summary.md" in lines[0] and "results/figures/" in lines[0]
    assert "val" not in {row[1] for row in rows} and "teacher" not in text


def test_headline_without_image_counts_or_kept_start():
    rows = [row for row in networks("test") if row[4] != "kept_start"]
    text = headline(rows)
    header = table_rows(text)[0]
    assert "Δ 95% CI (images)" not in header and "kept start" not in header and "kept start" not in text
    assert "test images not counted" in text.splitlines()[0]


def test_headline_one_seed_and_missing_metrics():
    rows = [row for row in networks("test") if row[3] == 0 and row[4] not in ("pq", "images_per_s")]
    header, _, *cells = table_rows(headline(rows))
    expanded = dict(zip(header, cells[1]))
    assert expanded["IoU"] == "0.650" and expanded["PQ"] == expanded["images/s"] == "–"
    assert expanded["Δ IoU vs baseline [95% CI]"] == "+0.050 (1 seed)"  # no interval from one pair


def test_headline_fits_a_terminal_for_thirteen_networks():
    names = ["baseline", "joint", "joint_error_map", "expanded_anchored", "expanded_committee", "ensemble_distilled",
             "pseudo_labelled", "feature_distilled", "unet", "basicunet", "ensemble", "wide_unet", "deep_unet"]
    rows = [("test", "student" if i < 8 else "reference", name, seed, metric, 0.5 + 0.01 * i + 0.001 * seed)
            for i, name in enumerate(names) for seed in range(3) for metric in ("iou", "dice", "kept_start")]
    text = headline(rows)
    assert len(table_rows(text)) == 2 + 13
    assert len(text.splitlines()) <= 20  # `make demo` prints it whole


def test_headline_without_test_rows():
    text = headline(networks("val"))
    assert "No test-split results." in text
