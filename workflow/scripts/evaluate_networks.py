"""Evaluate every segmentation network of one seed (students and references) on the whole
test images: pixel and object metrics, the scores under each network's validation
calibration (threshold and temperature chosen on validation, never on test), what it costs
to run, and for the feature-distilled student its agreement with its teacher. Validation
scores go into the same tables as rows of the data set "val": what defaults are chosen on."""

from jobsetup import data_files, start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

import functools
import logging

import numpy as np

from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.costs import checkpoint_inference_costs
from emkt.evaluate import panel_arrays
from emkt.evaluation_jobs import evaluate_network, network_probabilities
from emkt.files import atomic_path

ev = config["evaluate"]
networks, paths = snakemake.params.networks, list(snakemake.input.models)
outputs = zip(snakemake.output.metrics, snakemake.output.per_image, snakemake.output.panel)
# Each in a process of its own (see checkpoint_inference_costs), before this job scores any
# network: the measurement has the job's core to itself, and (with one thread) the processes
# are forked from this one.
costs = checkpoint_inference_costs(paths, ev["batch_size"], device, nothing_ran_here=True)
files = data_files(snakemake, config)
items = files.split_items("test")
# read only for checkpoints saved without a calibration, and then once for all of them
val_items = functools.cache(lambda: files.split_items("val"))
# The feature-distilled student's teacher (by condition): its test probability maps, kept
# when that network is evaluated here, computed otherwise.
agreement = dict(snakemake.params.agreement)
kept_probs = {}
for (role, condition), path, cost, (metrics_path, per_image_path, panel_path) in zip(networks, paths, costs, outputs):
    model, checkpoint = load_model(path, expected_kind=SEGMENTATION_KINDS)
    reference_probs = None
    if condition in agreement:
        reference = agreement[condition]
        if reference not in kept_probs:
            kept_probs[reference] = network_probabilities(*load_model(reference, expected_kind=SEGMENTATION_KINDS),
                                                          items, ev, device)
        reference_probs = kept_probs[reference]
    result = evaluate_network(model, checkpoint, role, condition, seed, items, val_items, ev,
                              device, cost, reference_probs)
    if path in agreement.values():
        kept_probs[path] = result.probs
    logging.getLogger("emkt").info("%s_%s_%d: test IoU %.4f", role, condition, seed,
                                   result.long.query("dataset == 'test' and metric == 'iou'")["value"].iloc[0])
    with atomic_path(metrics_path) as tmp:
        result.long.to_csv(tmp, index=False)
    with atomic_path(per_image_path) as tmp:
        result.per_image.to_csv(tmp, index=False)
    with atomic_path(panel_path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **panel_arrays(items, result.probs, ev["panel_images"]))
