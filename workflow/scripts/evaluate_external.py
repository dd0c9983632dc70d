"""Evaluate every segmentation network of one seed on an external labelled set (config
'external_test'), with the pixel and object metrics of the test split."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
external = snakemake.wildcards.external
config, device = start_torch_job(snakemake, seed)

import logging

import pandas as pd

from emkt.calibration import stored_calibration
from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.data import load_folder_images
from emkt.evaluation_jobs import evaluate_on_external
from emkt.files import atomic_path

ev = config["evaluate"]
items = load_folder_images(pd.read_csv(snakemake.input.index), config["data"]["ignore_label"])
log = logging.getLogger("emkt")
log.info("%s: %d images", external, len(items))
outputs = zip(snakemake.params.networks, snakemake.input.models, snakemake.output.metrics, snakemake.output.per_image)
for (role, condition), path, metrics_path, per_image_path in outputs:
    model, checkpoint = load_model(path, expected_kind=SEGMENTATION_KINDS)
    if stored_calibration(checkpoint) is None:
        log.warning("%s has no stored calibration: no tuned-threshold scores", path)
    long, per_image = evaluate_on_external(model, checkpoint, role, condition, seed, items, external, ev, device)
    with atomic_path(metrics_path) as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(per_image_path) as tmp:
        per_image.to_csv(tmp, index=False)
