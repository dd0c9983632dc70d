"""Apply the pre-declared rule for the default expansion variant to the study's selection
tables (validation split) and print the choice with the numbers it rests on:

    .venv/bin/python studies/choose_variant.py study/demo/results/tables/expansion_selection.csv \
        study/em-mito-mini/results/tables/expansion_selection.csv
"""

import argparse

from emkt.selection import choose_variant, read_selection_tables

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("tables", nargs="+", help="expansion_selection.csv of each study run")
parser.add_argument("--tie", type=float, default=0.001, help="mean Δ IoU within this of the best ties")
args = parser.parse_args()
chosen, table = choose_variant(read_selection_tables(args.tables), args.tie)
print("validation Δ IoU vs joint, mean over seeds, per data set:")
print(table.to_string(float_format=lambda x: f"{x:+.4f}"))
print(f"chosen: {chosen}")
