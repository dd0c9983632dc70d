"""Stage 1: pretrain a teacher (the Critic or the error-map UNet) on corrupted ground-truth masks."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import save_model
from emkt.models import teacher_arch
from emkt.training.teacher import pretrain_teacher

kind = snakemake.params.kind
files = data_files(snakemake, config)
teacher = pretrain_teacher(config, seed, files, snakemake.output.history, device, resume, kind=kind)
save_model(snakemake.output.model, teacher, "teacher", teacher_arch(config, kind), config["input_size"],
           {"stage": snakemake.wildcards.pretrained, "seed": seed})
resume.clear()
