"""The default expansion variant, chosen on validation data by the rule written down before the
study ran (docs/results/2026-12-01-expansion-study.md): the variant with the largest mean
validation Δ IoU against the joint student, averaged over the study's data sets; variants
within ``tie`` of the best count as tied and the cheapest of them wins.

Reads only selection tables (``expansion_selection.csv``, the validation split): a table with
any other split in it is refused, so that a test number can never choose.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emkt.tables import DATASET, VAL_SET

# cheapest first: faithful trains nothing but the student; error_map and committee need a
# second teacher kind (pretrained and joint-trained)
COST_ORDER = ["faithful", "anchored", "alternating", "error_map", "committee"]
PREFIX = "expanded_"


def variant_deltas(selection: pd.DataFrame, source: str, metric: str = "iou") -> pd.Series:
    """Mean validation Δ ``metric`` vs the joint student of each expansion variant in one
    selection table (index: variant name)."""
    datasets = set(selection[DATASET])
    if datasets != {VAL_SET}:
        raise ValueError(f"{source}: not a selection table: its rows are from {sorted(datasets)}, "
                         f"only {VAL_SET!r} may choose")
    rows = selection[(selection["model"] == "student") & (selection["metric"] == metric)
                     & selection["condition"].str.startswith(PREFIX)]
    if rows.empty:
        raise ValueError(f"{source}: no expanded_* student rows for metric {metric!r}")
    return rows.set_index(rows["condition"].str.removeprefix(PREFIX))["delta_mean"].rename(source)


def choose_variant(tables: dict[str, pd.DataFrame], tie: float = 0.001,
                   order: list[str] = COST_ORDER) -> tuple[str, pd.DataFrame]:
    """The chosen variant and the table it was chosen from (one column per data set, their
    mean, and whether the variant ties with the best). Only variants present in every table
    compete."""
    deltas = pd.concat([variant_deltas(table, name) for name, table in tables.items()], axis=1, join="inner")
    deltas["mean"] = deltas.mean(axis=1)
    deltas["tied_with_best"] = deltas["mean"] >= deltas["mean"].max() - tie
    unknown = set(deltas.index) - set(order)
    if unknown:
        raise ValueError(f"variants without a place in the cost order: {sorted(unknown)}")
    tied = [variant for variant in order if variant in deltas.index and deltas.loc[variant, "tied_with_best"]]
    return tied[0], deltas.reindex([v for v in order if v in deltas.index])


def read_selection_tables(paths: list[str | Path]) -> dict[str, pd.DataFrame]:
    """Selection tables by the name of their run folder (``<run>/results/tables/...csv``)."""
    tables = {}
    for path in map(Path, paths):
        name = path.parents[2].name if len(path.parents) > 2 else str(path)
        tables[name] = pd.read_csv(path)
    return tables
