"""Stage 1: pretrain the teacher on corrupted ground-truth masks."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import save_model
from emkt.train import pretrain_teacher

files = data_files(snakemake, config)
teacher = pretrain_teacher(config, seed, files, snakemake.output.history, device, resume)
save_model(snakemake.output.model, teacher, "teacher", config["teacher"], config["input_size"],
           {"stage": "pretrained", "seed": seed})
resume.clear()
