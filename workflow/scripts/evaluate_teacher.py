"""Evaluate one teacher: its predicted vs the true per-tile loss (BCE with train.pos_weight) of the same seed's
students on the test split."""

from jobsetup import start_torch_job, data_files

seed = int(snakemake.wildcards.seed)
stage = snakemake.wildcards.stage
config, device = start_torch_job(snakemake, seed)

import functools

import pandas as pd

from emkt.checkpoints import load_model
from emkt.evaluate import pixel_error_auroc, summarise_teacher, teacher_predictions
from emkt.files import atomic_path
from emkt.inference import predict_probability
from emkt.metrics import PixelAurocMeter
from emkt.models import is_dense_teacher

teacher, checkpoint = load_model(snakemake.input.teacher, expected_kind="teacher")
teacher = teacher.to(device)
items = data_files(snakemake, config).split_items("test")
ev = config["evaluate"]
frames, aurocs = [], {}
for condition, path in zip(snakemake.params.conditions, snakemake.input.students):
    student, student_ckpt = load_model(path, expected_kind="student")
    student = student.to(device)
    probs = [predict_probability(student, item["image"], student_ckpt["input_size"], ev["overlap"],
                                 ev["batch_size"], device) for item in items]
    per_tile = teacher_predictions(teacher, items, probs, checkpoint["input_size"], device, snakemake.params.pos_weight)
    frames.append(per_tile.assign(teacher_stage=stage, seed=seed, student_condition=condition))
    if is_dense_teacher(teacher):
        aurocs[condition] = pixel_error_auroc(teacher, items, probs, checkpoint["input_size"], device, ev["threshold"])
per_tile = pd.concat(frames, ignore_index=True)
# Pooled over all students, and per student: a teacher may rank the baseline student's
# errors well and still be fooled by the expanded student it was minimised against.
agreement = summarise_teacher(per_tile)
for condition, tiles in per_tile.groupby("student_condition", sort=False):
    agreement.update({f"{k}@{condition}": v for k, v in summarise_teacher(tiles).items() if k != "pearson"})
# An error-map teacher also says where the errors are: the AUROC of its predicted per-pixel
# error for the pixels each student got wrong, pooled and per student.
if aurocs:
    pooled = functools.reduce(PixelAurocMeter.merge, aurocs.values(), PixelAurocMeter())
    agreement["pixel_auroc"] = pooled.compute()
    agreement.update({f"pixel_auroc@{condition}": meter.compute() for condition, meter in aurocs.items()})
long = pd.DataFrame([{"model": "teacher", "condition": stage, "seed": seed, "metric": k, "value": v}
                     for k, v in agreement.items()])
with atomic_path(snakemake.output.metrics) as tmp:
    long.to_csv(tmp, index=False)
with atomic_path(snakemake.output.per_tile) as tmp:
    per_tile.to_csv(tmp, index=False)
