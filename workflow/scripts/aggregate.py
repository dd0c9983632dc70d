"""Collect every evaluation (test split, external sets, teachers) into one long table and
summarise it over seeds, one block per data set."""

from jobsetup import start_job

config = start_job(snakemake)

from pathlib import Path

from emkt.files import atomic_path
from emkt.tables import compare_students, read_long_tables, summarize, to_markdown

long = read_long_tables([*snakemake.input.students, *snakemake.input.external, *snakemake.input.teachers])
summary = summarize(long, reference="baseline")
with atomic_path(snakemake.output.long) as tmp:
    long.to_csv(tmp, index=False)
with atomic_path(snakemake.output.csv) as tmp:
    summary.to_csv(tmp, index=False)
with atomic_path(snakemake.output.markdown) as tmp:
    Path(tmp).write_text(to_markdown(summary))
# The expansion variants (and the joint students) against the joint student they start from.
if hasattr(snakemake.output, "expansion"):
    expansion = compare_students(long, snakemake.params.expansion_rows, snakemake.params.expansion_metrics,
                                 reference="joint")
    with atomic_path(snakemake.output.expansion) as tmp:
        Path(tmp).write_text(to_markdown(expansion))
    with atomic_path(snakemake.output.expansion_csv) as tmp:
        expansion.to_csv(tmp, index=False)
