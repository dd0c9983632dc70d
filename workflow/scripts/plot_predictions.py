"""A panel of test images with their GT and each condition's prediction (first seed)."""

from jobsetup import start_job

config = start_job(snakemake)

import numpy as np

from emkt.plots import plot_prediction_panel

panel = {}
for condition, path in zip(snakemake.params.conditions, snakemake.input):
    with np.load(path) as arrays:
        panel[condition] = {key: arrays[key] for key in ("image", "gt", "prob")}
plot_prediction_panel(panel, snakemake.output[0], max_images=max(1, snakemake.params.max_images))
