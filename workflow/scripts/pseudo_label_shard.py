"""Pseudo-labels of one pool shard: the teacher network's calibrated probability of every pool
pixel (its logits at the temperature fitted on validation, emkt.calibration)."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

import logging

from emkt.calibration import calibrated
from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.inference import write_pseudo_labels

teacher, checkpoint = load_model(snakemake.input.teacher, expected_kind=SEGMENTATION_KINDS)
ev = config["evaluate"]
count = write_pseudo_labels(calibrated(teacher, checkpoint).to(device), snakemake.input.shard, snakemake.output[0],
                            checkpoint["input_size"], ev["overlap"], ev["batch_size"], device)
logging.info("pseudo-labelled %d pool tiles with %s", count, snakemake.input.teacher)
