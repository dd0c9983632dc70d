"""Teacher-predicted vs true BCE of the students' test tiles."""

from jobsetup import start_job

config = start_job(snakemake)

import pandas as pd

from emkt.plots import plot_teacher_scatter

plot_teacher_scatter(pd.concat([pd.read_csv(p) for p in snakemake.input], ignore_index=True), snakemake.output[0])
