"""Write a store's manifest (format, shards, counts): the one file training rules depend on."""

from jobsetup import start_job

config = start_job(snakemake)

import logging

from emkt.store import write_manifest

store_set = snakemake.wildcards.store_set
manifest = write_manifest(store_set, list(snakemake.input), snakemake.output[0],
                          tile=snakemake.params.tile if store_set == "pool" else None)
logging.info("%s store: %d images in %d shards", store_set, manifest["images"], len(manifest["shards"]))
