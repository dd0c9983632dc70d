"""The headline table: the few test-split numbers a newcomer reads first.

``summary.md`` has every metric of every network on every data set, with per-seed values and
both intervals; too much for a first look. The headline keeps the test split and one row per
segmentation network (students, then references; teachers predict losses, not masks) with the
scores people compare, the cost, and the IoU difference to the baseline student with its 95%
intervals, all rounded for people: counts whole with thousands separators, everything else to
3 significant digits, the sd at the mean's precision.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .tables import COMPARED_MODELS, DATASET, KEPT_START, TEST_SET

__all__ = ["HEADLINE_METRICS", "decimals", "format_count", "format_mean_sd", "headline_markdown"]

# (metric, column title), in column order
HEADLINE_METRICS = [("iou", "IoU"), ("dice", "Dice"), ("object_f1", "object F1"), ("pq", "PQ"), ("ece", "ECE"),
                    ("parameters", "parameters"), ("images_per_s", "images/s")]
# whole numbers by nature: no decimals, whatever their size
COUNT_METRICS = ("parameters",)
DELTA_METRIC = "iou"
SIGNIFICANT = 3
MISSING = "–"
# relative to the workflow's directory, where `make demo` prints the table
WHERE = "Full tables: results/tables/summary.md (.csv), selection.md (validation split); figures: results/figures/."


def decimals(x: float, significant: int = SIGNIFICANT) -> int:
    """Decimal places that show ``x`` to ``significant`` digits: 3 for 0.593, 0 for 147,
    -1 for 1234 (rounded to tens); ``significant`` for 0 or a non-finite ``x``."""
    if not math.isfinite(x) or x == 0:
        return significant
    return significant - 1 - math.floor(math.log10(abs(x)))


def _number(x: float, places: int, sign: bool = False) -> str:
    # negative places round to tens, hundreds, ...; the text then has no decimals
    x = round(x, places) + 0.0  # + 0.0: no "-0"
    return f"{x:{'+' if sign else ''},.{max(places, 0)}f}"


def format_mean_sd(mean: float, sd: float, significant: int = SIGNIFICANT) -> str:
    """"0.593 ± 0.004", "147 ± 73": the mean to ``significant`` digits and the sd to the same
    decimal place; the mean alone when the sd is undefined (one seed); "–" without a mean."""
    if not math.isfinite(mean):
        return MISSING
    places = decimals(mean, significant)
    text = _number(mean, places)
    return text if not math.isfinite(sd) else f"{text} ± {_number(sd, places)}"


def format_count(mean: float, sd: float) -> str:
    """"182,001": a count whole, with thousands separators; "± sd" only when it varies over
    seeds (sd 0, e.g. a network's parameter count, is not worth a "± 0")."""
    if not math.isfinite(mean):
        return MISSING
    text = _number(mean, 0)
    return text if not math.isfinite(sd) or round(sd) == 0 else f"{text} ± {_number(sd, 0)}"


def _interval(low: float, high: float, places: int) -> str:
    return f"[{_number(low, places, sign=True)}, {_number(high, places, sign=True)}]"


def _delta_cell(rec: pd.Series | None, places: int) -> str:
    """"+0.012 [-0.003, +0.027]": mean paired difference and its t interval over seeds."""
    if rec is None or not math.isfinite(rec["delta_mean"]):
        return MISSING
    text = _number(rec["delta_mean"], places, sign=True)
    if math.isfinite(rec["delta_ci_low"]):
        return f"{text} {_interval(rec['delta_ci_low'], rec['delta_ci_high'], places)}"
    return f"{text} ({int(rec['n_pairs'])} seed)"  # one pair: no interval


def _boot_cell(rec: pd.Series | None, places: int) -> str:
    if rec is None or not math.isfinite(rec.get("boot_ci_low", math.nan)):
        return MISSING
    return _interval(rec["boot_ci_low"], rec["boot_ci_high"], places)


def _counts(values: pd.Series, unit: str) -> str:
    # "3 seeds", or "2–3 seeds" when networks differ
    counts = sorted({int(v) for v in values if v > 0})
    if not counts:
        return f"no {unit}"
    return f"{counts[0] if len(counts) == 1 else f'{counts[0]}–{counts[-1]}'} {unit}"


def _align(rows: list[list[str]], right: list[bool]) -> list[str]:
    """Markdown table lines with padded cells, so that the raw text also reads as a table."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(right))]
    pad = [lambda c, w=w, r=r: c.rjust(w) if r else c.ljust(w) for w, r in zip(widths, right)]
    lines = ["| " + " | ".join(p(c) for p, c in zip(pad, row)) + " |" for row in rows]
    rule = "|" + "|".join("-" * (w + 1) + ":" if r else ":" + "-" * (w + 1) for w, r in zip(widths, right)) + "|"
    return [lines[0], rule, *lines[1:]]


def headline_markdown(summary: pd.DataFrame) -> str:
    """The headline table as Markdown, from the report table (``emkt.tables.summary_table``).

    Only the test split's rows (a summary without ``dataset`` is the test split). One row per
    student, then per reference network, each in the summary's order; teacher rows and other
    data sets are left out. Columns: kind, network, ``HEADLINE_METRICS`` (mean ± sd over
    seeds, ``format_count`` for ``COUNT_METRICS``, ``format_mean_sd`` else), Δ IoU to the
    reference student (``summary.attrs["reference"]``) with its 95% t interval over seeds, the
    95% image-bootstrap interval when the summary has it (``with_image_bootstrap``), and
    "kept start" k/n when a network has it. Δ and its intervals are given to the decimal
    place of the row's IoU. A first line says what it is (test split, seeds, test images)
    and where the full tables are; a note under the table explains Δ and kept start.
    """
    reference = summary.attrs.get("reference", "baseline")
    test = summary[summary[DATASET] == TEST_SET] if DATASET in summary.columns else summary
    test = test[test["model"].isin(COMPARED_MODELS)]
    networks = [pair for model in COMPARED_MODELS
                for pair in dict.fromkeys(zip(test["model"], test["condition"])) if pair[0] == model]
    by_key = {(rec["model"], rec["condition"], rec["metric"]): rec for _, rec in test.iterrows()}
    boot = "boot_ci_low" in test.columns and bool(np.isfinite(test["boot_ci_low"].to_numpy(dtype=float)).any())
    kept = KEPT_START in test.columns and test[KEPT_START].fillna("").astype(str).ne("").any()

    header = ["kind", "network", *(title for _, title in HEADLINE_METRICS),
              f"Δ IoU vs {reference} [95% CI]", *(["Δ 95% CI (images)"] if boot else []),
              *(["kept start"] if kept else [])]
    rows = [header]
    for model, condition in networks:
        cells = [model, str(condition).replace("|", "\\|")]
        for metric, _ in HEADLINE_METRICS:
            rec = by_key.get((model, condition, metric))
            mean, sd = (math.nan, math.nan) if rec is None else (float(rec["mean"]), float(rec["sd"]))
            cells.append(format_count(mean, sd) if metric in COUNT_METRICS else format_mean_sd(mean, sd))
        iou = by_key.get((model, condition, DELTA_METRIC))
        places = decimals(float(iou["mean"])) if iou is not None else SIGNIFICANT
        cells.append(_delta_cell(iou, places))
        if boot:
            cells.append(_boot_cell(iou, places))
        if kept:
            # the same "k/n" on every row of the network (with_kept_start)
            mine = test[(test["model"] == model) & (test["condition"] == condition)][KEPT_START]
            cells.append(next((str(k) for k in mine if isinstance(k, str) and k), ""))
        rows.append(cells)

    seeds = _counts(test["n_seeds"], "seeds") if len(test) else "no seeds"
    images = test["n_images"] if "n_images" in test.columns else pd.Series(dtype=float)
    n_images = f"{int(images.max())} test images" if len(images) and images.max() > 0 else "test images not counted"
    lines = [f"Test split, {seeds}, {n_images}; mean ± sd over seeds. {WHERE}", ""]
    if len(rows) == 1:
        return "\n".join([*lines, "No test-split results."]) + "\n"
    right = [False, False, *([True] * (len(header) - 2))]
    notes = [f"Δ IoU: paired difference to the {reference} student, mean [95% CI over seeds, t distribution]"
             + ("; (images): 95% paired bootstrap over the test images." if boot else ".")]
    if kept:
        notes.append("kept start k/n: k of n seeds kept their starting weights (no fine-tuning epoch beat the start).")
    return "\n".join([*lines, *_align(rows, right), "", *notes]) + "\n"
