"""Stage 2: the BCE-only student baseline, from scratch."""

from jobsetup import start_torch_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import save_model
from emkt.train import DataFiles, train_student_baseline

files = DataFiles(snakemake.input.split, snakemake.input.labelled)
student = train_student_baseline(config, seed, files, snakemake.output.history, device, resume)
save_model(snakemake.output.model, student, "student", config["student"], config["input_size"],
           {"condition": "baseline", "seed": seed})
resume.clear()
