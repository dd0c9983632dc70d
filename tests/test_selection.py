"""The rule that chooses the default expansion variant on validation data."""

import pandas as pd
import pytest

from emkt.selection import choose_variant, read_selection_tables, variant_deltas


def selection(deltas: dict[str, float], dataset: str = "val") -> pd.DataFrame:
    rows = [{"dataset": dataset, "model": "student", "condition": "joint", "metric": "iou", "delta_mean": float("nan")}]
    rows += [{"dataset": dataset, "model": "student", "condition": f"expanded_{v}", "metric": "iou", "delta_mean": d}
             for v, d in deltas.items()]
    rows += [{"dataset": dataset, "model": "student", "condition": f"expanded_{v}", "metric": "dice", "delta_mean": 1.0}
             for v in deltas]
    return pd.DataFrame(rows)


def test_the_largest_mean_over_data_sets_wins():
    chosen, table = choose_variant({"demo": selection({"anchored": 0.010, "committee": 0.000}),
                                    "real": selection({"anchored": 0.000, "committee": 0.030})})
    assert chosen == "committee"
    assert table.loc["committee", "mean"] == pytest.approx(0.015)
    assert table.loc["anchored", "tied_with_best"] == False  # noqa: E712


def test_a_tie_goes_to_the_cheaper_variant():
    chosen, _ = choose_variant({"a": selection({"committee": 0.0105, "anchored": 0.0100, "faithful": 0.0})})
    assert chosen == "anchored"
    chosen, _ = choose_variant({"a": selection({"committee": 0.0125, "anchored": 0.0100})})
    assert chosen == "committee"


def test_a_test_table_cannot_choose(tmp_path):
    with pytest.raises(ValueError, match="not a selection table.*'test'"):
        variant_deltas(selection({"anchored": 0.1}, dataset="test"), "expansion.csv")
    path = tmp_path / "run" / "results" / "tables" / "expansion_selection.csv"
    path.parent.mkdir(parents=True)
    selection({"anchored": 0.1}).to_csv(path, index=False)
    assert list(read_selection_tables([path])) == ["run"]
