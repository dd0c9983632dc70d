"""Evaluate every teacher of one seed: its predicted vs the true per-tile loss (BCE with
train.pos_weight) of the same seed's students on the test split. Each student's probability
maps are computed once and shown to every teacher."""

from jobsetup import data_files, start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

from emkt.checkpoints import load_model
from emkt.evaluation_jobs import evaluate_teacher, network_probabilities
from emkt.files import atomic_path

ev = config["evaluate"]
items = data_files(snakemake, config).split_items("test")
student_probs = {condition: network_probabilities(*load_model(path, expected_kind="student"), items, ev, device)
                 for condition, path in zip(snakemake.params.conditions, snakemake.input.students)}
outputs = zip(snakemake.params.stages, snakemake.input.teachers, snakemake.output.metrics, snakemake.output.per_tile)
for stage, path, metrics_path, per_tile_path in outputs:
    teacher, checkpoint = load_model(path, expected_kind="teacher")
    long, per_tile = evaluate_teacher(teacher, checkpoint, stage, seed, items, student_probs, device,
                                      snakemake.params.pos_weight, ev["threshold"])
    with atomic_path(metrics_path) as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(per_tile_path) as tmp:
        per_tile.to_csv(tmp, index=False)
