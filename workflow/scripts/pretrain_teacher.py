"""Stage 1: pretrain the teacher on corrupted ground-truth masks."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

from emkt.checkpoints import save_model
from emkt.train import DataFiles, pretrain_teacher

teacher = pretrain_teacher(config, seed, DataFiles(snakemake.input.split, snakemake.input.labelled), snakemake.output.history, device)
save_model(snakemake.output.model, teacher, "teacher", config["teacher"], config["input_size"],
           {"stage": "pretrained", "seed": seed})
