"""Training curves of every stage and seed from the per-epoch CSVs."""

from jobsetup import start_job

config = start_job(snakemake)

import pandas as pd

from emkt.plots import plot_training_curves

stages, seeds = snakemake.params.stages, snakemake.params.seeds
paths = iter(snakemake.input)  # expand() orders stage-major, seed-minor
histories = {stage: [(seed, pd.read_csv(next(paths))) for seed in seeds] for stage in stages}
plot_training_curves(histories, snakemake.output[0])
