"""Per-metric bars of the students, seeds as points."""

from jobsetup import start_job

config = start_job(snakemake)

import pandas as pd

from emkt.plots import plot_metric_bars

plot_metric_bars(pd.read_csv(snakemake.input[0]), snakemake.output[0], snakemake.params.metrics)
