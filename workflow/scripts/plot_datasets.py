"""Per-metric bars of every network on the test split and on each external set."""

from jobsetup import start_job

config = start_job(snakemake)

import pandas as pd

from emkt.plots import plot_dataset_bars

plot_dataset_bars(pd.read_csv(snakemake.input[0]), snakemake.output[0], snakemake.params.metrics)
