"""Stage 2: the BCE-only student baseline, from scratch."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import save_model
from emkt.train import train_student_baseline

files = data_files(snakemake, config)
student = train_student_baseline(config, seed, files, snakemake.output.history, device, resume)
save_model(snakemake.output.model, student, "student", config["student"], config["input_size"],
           {"condition": "baseline", "seed": seed})
resume.clear()
