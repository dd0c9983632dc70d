"""Evaluate one segmentation network (a student or a reference) on the whole test images:
pixel and object metrics, the scores under its validation calibration (threshold and
temperature chosen on validation, never on test), what it costs to run, and for the
feature-distilled student its agreement with its teacher. Its validation scores go into the
same table as rows of the data set "val": what defaults are chosen on."""

from jobsetup import data_files, start_torch_job

seed = int(snakemake.wildcards.seed)
role, condition = snakemake.wildcards.role, snakemake.wildcards.condition
config, device = start_torch_job(snakemake, seed)

import numpy as np
import pandas as pd

from emkt.calibration import calibrate, stored_calibration
from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.costs import inference_cost
from emkt.evaluate import calibrated_scores, evaluate_segmenter, fine_tuning_scores, panel_arrays
from emkt.files import atomic_path
from emkt.inference import predict_probability
from emkt.metrics import agreement_with_reference
from emkt.tables import to_long

model, checkpoint = load_model(snakemake.input.model, expected_kind=SEGMENTATION_KINDS)
ev = config["evaluate"]
size = checkpoint["input_size"]
# First, before anything else runs the model in this process (see inference_cost).
cost = inference_cost(model, ev["batch_size"], size, device)
files = data_files(snakemake, config)
# A checkpoint written before calibrations were stored is calibrated here, the same way.
calibration = stored_calibration(checkpoint) or calibrate(model, files.split_items("val"), size, ev, device, seed)
items = files.split_items("test")
scores, per_image, probs = evaluate_segmenter(model, items, size, ev["overlap"], ev["batch_size"], device,
                                              ev["threshold"], ev["calibration_bins"], ev["min_object_size"])
kept = fine_tuning_scores(checkpoint)
metrics = {**scores, **calibrated_scores(items, probs, calibration, ev["calibration_bins"]), **kept, **cost}
if "agreement" in snakemake.input.keys():
    reference, reference_ckpt = load_model(snakemake.input.agreement, expected_kind=SEGMENTATION_KINDS)
    reference = reference.to(device)
    reference_probs = [predict_probability(reference, item["image"], reference_ckpt["input_size"], ev["overlap"],
                                           ev["batch_size"], device) for item in items]
    metrics.update(agreement_with_reference(probs, reference_probs, [item.get("valid") for item in items],
                                            ev["threshold"]))
validation = {key: calibration[key] for key in ("iou", "iou_tuned", "ap", "ece", "ece_calibrated", "threshold",
                                                "temperature")}
long = pd.concat([to_long(metrics, role, condition, seed),
                  to_long({**validation, **kept}, role, condition, seed, dataset="val")], ignore_index=True)
with atomic_path(snakemake.output.metrics) as tmp:
    long.to_csv(tmp, index=False)
with atomic_path(snakemake.output.per_image) as tmp:
    per_image.assign(dataset="test", model=role, condition=condition, seed=seed).to_csv(tmp, index=False)
with atomic_path(snakemake.output.panel) as tmp, open(tmp, "wb") as handle:
    np.savez_compressed(handle, **panel_arrays(items, probs, ev["panel_images"]))
