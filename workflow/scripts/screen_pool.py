"""Pool images that copy a validation or test image (exactly or nearly): listed, and left out of the pool store."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

import pandas as pd

from emkt.files import atomic_path
from emkt.screening import SIGNATURE_DTYPES, screen_pool

settings = config["data"]["pool_screening"]
index = pd.read_csv(snakemake.input.index, dtype=SIGNATURE_DTYPES)
split = pd.read_csv(snakemake.input.split, usecols=["id", "split"])
excluded = screen_pool(index, split, settings["near_max_distance"], settings["max_shift"], processes=snakemake.threads)
with atomic_path(snakemake.output[0]) as tmp:
    excluded.to_csv(tmp, index=False)
counts = excluded["reason"].value_counts()
logging.info("pool screening: %d of %d pool images excluded (%d exact, %d near copies of val/test images; "
             "near_max_distance %s, max_shift %d)", len(excluded), int((index["set"] == "unlabelled").sum()),
             counts.get("exact", 0), counts.get("near", 0), settings["near_max_distance"], settings["max_shift"])
