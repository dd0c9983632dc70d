"""Seeded train/val/test split of the labelled images: the single source of truth for later rules."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

import pandas as pd

from emkt.data import split_index
from emkt.runtime import atomic_path

split = config["split"]
table = split_index(pd.read_csv(snakemake.input[0]), split["train"], split["val"], split["test"], split["seed"])
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
logging.info("split sizes: %s", table["split"].value_counts().to_dict())
