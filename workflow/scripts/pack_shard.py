"""Pack one shard of the labelled set or the unlabelled pool into the store."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

import pandas as pd

from emkt.store import pack_labelled_shard, pack_pool_shard, shard_rows

shard = int(snakemake.wildcards.shard)
index = pd.read_csv(snakemake.input.index, usecols=["id", "set", "path", "mask", "height", "width"])
wanted = "labelled" if snakemake.rule == "pack_labelled_shard" else "unlabelled"
rows = index[index["set"] == wanted]
if wanted == "unlabelled":  # copies of val/test images (screen_pool) never reach the store
    rows = rows[~rows["id"].isin(pd.read_csv(snakemake.input.excluded, usecols=["id"])["id"])]
rows = rows.reset_index(drop=True)
rows = rows.iloc[list(shard_rows(len(rows), snakemake.params.shards, shard))]
del index
if wanted == "labelled":
    pack_labelled_shard(rows, snakemake.output.data, snakemake.output.table, processes=snakemake.threads)
    logging.info("packed %d labelled images", len(rows))
else:
    tiles = pack_pool_shard(rows, snakemake.params.tile, snakemake.output.data, snakemake.output.origin,
                            processes=snakemake.threads)
    logging.info("packed %d pool images into %d tiles", len(rows), tiles)
