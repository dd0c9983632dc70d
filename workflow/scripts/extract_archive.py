"""Extract one verified archive (safe member names; a rerun after a crash completes the tree)."""

from jobsetup import start_job

config = start_job(snakemake)

from emkt.download import extract_archive

extract_archive(snakemake.input[0], snakemake.params.dest, snakemake.output.manifest)
