"""Stage 3: joint teacher-student training from the pretrained teacher."""

from jobsetup import start_torch_job

seed = int(snakemake.wildcards.seed)
config, device = start_torch_job(snakemake, seed)

from emkt.checkpoints import load_model, save_model
from emkt.train import DataFiles, joint_train

pretrained, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
teacher, student = joint_train(config, seed, DataFiles(snakemake.input.split, snakemake.input.labelled), pretrained, snakemake.output.history, device)
save_model(snakemake.output.teacher, teacher, "teacher", config["teacher"], config["input_size"],
           {"stage": "joint", "seed": seed})
save_model(snakemake.output.student, student, "student", config["student"], config["input_size"],
           {"condition": "joint", "seed": seed})
