"""Read every image and mask once: the index of usable images and the excluded files with
reasons (for an external set given as a labelled volume, of its sections)."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

from emkt.files import atomic_path
from emkt.indexing import build_index, build_volume_index, check_exclusions

params = snakemake.params
volume = getattr(params, "volume", None)  # only index_external has it
if volume is not None:
    index, excluded = build_volume_index(*volume, ignore_label=params.ignore_label)
else:
    index, excluded = build_index(params.labelled_dir, params.unlabelled_dir, processes=snakemake.threads,
                                  ignore_label=params.ignore_label)
# Kept outside the rule's outputs, which Snakemake deletes when the rule fails.
with atomic_path(params.report) as tmp:
    excluded.to_csv(tmp, index=False)
summary = check_exclusions(index, excluded, params.max_excluded_fraction, params.report)
logging.info("usable and excluded files per set:\n%s", summary.to_string())
if len(excluded):
    logging.warning("%d file(s) excluded, listed with reasons in %s", len(excluded), snakemake.output.excluded)
with atomic_path(snakemake.output.excluded) as tmp:
    excluded.to_csv(tmp, index=False)
with atomic_path(snakemake.output.index) as tmp:
    index.to_csv(tmp, index=False)
