"""Seeded train/val/test split of the labelled images: the single source of truth for later rules."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

import pandas as pd

from emkt.data import split_index
from emkt.files import atomic_path

split = config["split"]
index = pd.read_csv(snakemake.input[0])
labelled = index[index["set"] == "labelled"].drop(columns=["set"]).reset_index(drop=True)
table = split_index(labelled, split["train"], split["val"], split["test"], split["seed"], split["group_by"],
                    split["block_size"], split["block_gap"])
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
logging.info("split sizes: %s", table["split"].value_counts().to_dict())
if split["group_by"] != "none":
    logging.info("sources per split: %s", table.groupby("split")["source"].unique().apply(list).to_dict())
