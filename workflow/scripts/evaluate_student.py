"""Evaluate one student checkpoint on the whole test images."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
condition = snakemake.wildcards.condition
config, device = start_torch_job(snakemake, seed)

import numpy as np
import pandas as pd

from emkt.checkpoints import load_model
from emkt.evaluate import evaluate_segmenter, panel_arrays
from emkt.files import atomic_path
from emkt.train import DataFiles

student, checkpoint = load_model(snakemake.input.model, expected_kind="student")
student = student.to(device)
items = DataFiles(snakemake.input.split, snakemake.input.labelled).split_items("test")
ev = config["evaluate"]
metrics, per_image, probs = evaluate_segmenter(student, items, checkpoint["input_size"], ev["overlap"],
                                               ev["batch_size"], device, ev["threshold"], ev["calibration_bins"])
long = pd.DataFrame([{"model": "student", "condition": condition, "seed": seed, "metric": k, "value": v}
                     for k, v in metrics.items()])
with atomic_path(snakemake.output.metrics) as tmp:
    long.to_csv(tmp, index=False)
with atomic_path(snakemake.output.per_image) as tmp:
    per_image.to_csv(tmp, index=False)
with atomic_path(snakemake.output.panel) as tmp, open(tmp, "wb") as handle:
    np.savez_compressed(handle, **panel_arrays(items, probs, ev["panel_images"]))
