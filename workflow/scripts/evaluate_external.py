"""Evaluate every segmentation network of one seed on an external labelled set (config
'external_test'), with the pixel and object metrics of the test split; and, where teachers are
trained, each teacher as a proofreader of each student on it (emkt.proofread)."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
external = snakemake.wildcards.external
config, device = start_torch_job(snakemake, seed)

import logging

import numpy as np
import pandas as pd

from emkt.calibration import stored_calibration
from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.data import load_folder_images
from emkt.evaluation_jobs import evaluate_on_external, proofread_on_external
from emkt.files import atomic_path
from emkt.proofread import check_teacher

ev = config["evaluate"]
items = load_folder_images(pd.read_csv(snakemake.input.index), config["data"]["ignore_label"])
log = logging.getLogger("emkt")
log.info("%s: %d images", external, len(items))
proofread = snakemake.params.proofread  # None without teachers
student_probs, student_checkpoints = {}, {}
outputs = zip(snakemake.params.networks, snakemake.input.models, snakemake.output.metrics, snakemake.output.per_image)
for (role, condition), path, metrics_path, per_image_path in outputs:
    model, checkpoint = load_model(path, expected_kind=SEGMENTATION_KINDS)
    if stored_calibration(checkpoint) is None:
        log.warning("%s has no stored calibration: no tuned-threshold scores", path)
    result = evaluate_on_external(model, checkpoint, role, condition, seed, items, external, ev, device)
    if proofread and role == "student" and condition in proofread["students"]:
        student_probs[condition], student_checkpoints[condition] = result.probs, (path, checkpoint)
    with atomic_path(metrics_path) as tmp:
        result.long.to_csv(tmp, index=False)
    with atomic_path(per_image_path) as tmp:
        result.per_image.to_csv(tmp, index=False)

if proofread:
    teachers = {}
    for stage, path in zip(proofread["stages"], snakemake.input.teachers):
        teachers[stage], teacher_checkpoint = load_model(path, expected_kind="teacher")
        for student_path, checkpoint in student_checkpoints.values():
            check_teacher(checkpoint, teacher_checkpoint, student_path, path)
    input_size = next(iter(student_checkpoints.values()))[1]["input_size"]
    long, curves, examples = proofread_on_external(teachers, input_size, items, student_probs, external, seed, ev,
                                                   device, proofread["pos_weight"], tuple(proofread["example"]))
    out = snakemake.output
    with atomic_path(out.proofreading) as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(out.review_curves) as tmp:
        curves.to_csv(tmp, index=False)
    with atomic_path(out.review_examples) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **examples)
