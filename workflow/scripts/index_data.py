"""List the labelled images (with masks) and the unlabelled pool."""

from jobsetup import start_job

config = start_job(snakemake)

from emkt.data import index_labelled, index_unlabelled
from emkt.runtime import atomic_path

with atomic_path(snakemake.output.labelled) as tmp:
    index_labelled(snakemake.params.labelled_dir).to_csv(tmp, index=False)
with atomic_path(snakemake.output.unlabelled) as tmp:
    index_unlabelled(snakemake.params.unlabelled_dir).to_csv(tmp, index=False)
