"""Accuracy against inference speed and size of every evaluated network."""

from jobsetup import start_job

config = start_job(snakemake)

import pandas as pd

from emkt.plots import plot_speed_accuracy

plot_speed_accuracy(pd.read_csv(snakemake.input[0]), snakemake.output[0])
