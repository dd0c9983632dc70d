"""Collect every evaluation (validation and test split, external sets, teachers) into one long
table and write the selection table (validation split) and the report table (test split and
external sets) apart, each summarised over seeds with a bootstrap over the images; the
headline table, the test split's few numbers to read first; and the proofreading table (the
teachers as proofreaders on the external sets)."""

from jobsetup import start_job

config = start_job(snakemake)

import logging
from pathlib import Path

from emkt.bootstrap import read_per_image_tables
from emkt.files import atomic_path
from emkt.headline import headline_markdown
from emkt.review import proofreading_markdown, proofreading_table
from emkt.tables import REPORT, SELECTION, read_long_tables, summary_table, to_markdown

long = read_long_tables([*snakemake.input.students, *snakemake.input.external, *snakemake.input.teachers])
per_image, skipped = read_per_image_tables([*snakemake.input.per_image, *snakemake.input.external_per_image])
for path in skipped:
    logging.warning("%s has no pixel counts (tp, fp, fn): no image bootstrap for it", path)
replicates = snakemake.params.bootstrap_replicates
out = snakemake.output
with atomic_path(out.long) as tmp:
    long.to_csv(tmp, index=False)
tables = {(REPORT, out.csv, out.markdown): {}, (SELECTION, out.selection_csv, out.selection): {}}
# The expansion variants (and the joint students) against the joint student they start from.
if hasattr(out, "expansion"):
    chosen = {"reference": "joint", "conditions": snakemake.params.expansion_rows,
              "metrics": snakemake.params.expansion_metrics}
    tables[(REPORT, out.expansion_csv, out.expansion)] = chosen
    tables[(SELECTION, out.expansion_selection_csv, out.expansion_selection)] = chosen
# The students that learn from the pool against the mean teacher, on the same pool and budget.
if hasattr(out, "rivals"):
    chosen = {"reference": "mean_teacher", "conditions": snakemake.params.pool_rows,
              "metrics": snakemake.params.expansion_metrics}
    tables[(REPORT, out.rivals_csv, out.rivals)] = chosen
    tables[(SELECTION, out.rivals_selection_csv, out.rivals_selection)] = chosen
for (purpose, csv, markdown), chosen in tables.items():
    table = summary_table(long, per_image, purpose, replicates=replicates, **chosen)
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(markdown) as tmp:
        Path(tmp).write_text(to_markdown(table))
    if csv == out.csv:  # the report table of every network: its test split is the headline
        with atomic_path(out.headline) as tmp:
            Path(tmp).write_text(headline_markdown(table))
if hasattr(out, "proofreading"):
    import pandas as pd

    table = proofreading_table(pd.concat([pd.read_csv(path) for path in snakemake.input.proofreading],
                                         ignore_index=True))
    with atomic_path(out.proofreading_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out.proofreading) as tmp:
        Path(tmp).write_text(proofreading_markdown(table))
