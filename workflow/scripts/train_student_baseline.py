"""Stage 2: the BCE-only student baseline, from scratch."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

from emkt.checkpoints import save_model
from emkt.train import DataFiles, train_student_baseline

student = train_student_baseline(config, seed, DataFiles(snakemake.input.split, snakemake.input.labelled), snakemake.output.history, device)
save_model(snakemake.output.model, student, "student", config["student"], config["input_size"],
           {"condition": "baseline", "seed": seed})
