"""Stage 4: knowledge expansion of the joint student on the unlabelled pool."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import load_model, save_model
from emkt.train import expand_student

student, _ = load_model(snakemake.input.student, expected_kind="student")
teacher, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
files = data_files(snakemake, config)
student = expand_student(config, seed, files, student, teacher, snakemake.output.history, device, resume)
save_model(snakemake.output.model, student, "student", config["student"], config["input_size"],
           {"condition": "expanded", "seed": seed})
resume.clear()
