"""Stage 3: joint teacher-student training from the pretrained teacher."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import load_model, save_model
from emkt.train import joint_train

pretrained, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
files = data_files(snakemake, config)
teacher, student = joint_train(config, seed, files, pretrained, snakemake.output.history, device, resume)
save_model(snakemake.output.teacher, teacher, "teacher", config["teacher"], config["input_size"],
           {"stage": "joint", "seed": seed})
save_model(snakemake.output.student, student, "student", config["student"], config["input_size"],
           {"condition": "joint", "seed": seed})
resume.clear()
