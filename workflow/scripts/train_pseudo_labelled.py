"""Pseudo-label self-training of a ViT student on labelled images plus the pseudo-labelled pool."""

from jobsetup import data_files, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import load_model, save_model
from emkt.models import build_student
from emkt.train import self_train

if snakemake.input.init:
    student, _ = load_model(snakemake.input.init[0], expected_kind="student")
else:
    student = build_student(config["student"], config["input_size"])
student = self_train(config, seed, data_files(snakemake, config), snakemake.input.pseudo, student,
                     snakemake.output.history, device, resume)
save_model(snakemake.output.model, student, "student", config["student"], config["input_size"],
           {"condition": "pseudo_labelled", "seed": seed})
resume.clear()
