"""Evaluate one segmentation network on an external labelled set (config 'external_test'),
with the pixel and object metrics of the test split."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
role, condition, external = snakemake.wildcards.role, snakemake.wildcards.condition, snakemake.wildcards.external
config, device = start_torch_job(snakemake, seed)

import logging

import pandas as pd

from emkt.calibration import stored_calibration
from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.data import load_folder_images
from emkt.evaluate import calibrated_scores, evaluate_segmenter
from emkt.files import atomic_path
from emkt.tables import to_long

model, checkpoint = load_model(snakemake.input.model, expected_kind=SEGMENTATION_KINDS)
ev = config["evaluate"]
items = load_folder_images(pd.read_csv(snakemake.input.index), config["data"]["ignore_label"])
logging.getLogger("emkt").info("%s: %d images", external, len(items))
scores, per_image, probs = evaluate_segmenter(model.to(device), items, checkpoint["input_size"], ev["overlap"],
                                          ev["batch_size"], device, ev["threshold"], ev["calibration_bins"],
                                          ev["min_object_size"])
calibration = stored_calibration(checkpoint)
if calibration is not None:  # chosen on the validation split when the network was saved
    scores.update(calibrated_scores(items, probs, calibration, ev["calibration_bins"]))
else:
    logging.getLogger("emkt").warning("%s has no stored calibration: no tuned-threshold scores",
                                      snakemake.input.model)
with atomic_path(snakemake.output.metrics) as tmp:
    to_long(scores, role, condition, seed, dataset=external).to_csv(tmp, index=False)
with atomic_path(snakemake.output.per_image) as tmp:
    per_image.assign(dataset=external, model=role, condition=condition, seed=seed).to_csv(tmp, index=False)
