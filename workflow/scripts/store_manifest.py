"""Write a store's manifest (format, shards, counts): the one file training rules depend on."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

from emkt.store import write_manifest

store_set = snakemake.params.store_set
manifest = write_manifest(store_set, list(snakemake.input), snakemake.output[0],
                          tile=None if store_set == "labelled" else snakemake.params.tile)
logging.info("%s store: %d images in %d shards", store_set, manifest["images"], len(manifest["shards"]))
