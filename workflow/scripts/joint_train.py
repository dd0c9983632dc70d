"""Stage 3: joint teacher-student training from a pretrained teacher (either kind)."""

from jobsetup import start_training_job, training_checkpointing, data_files

seed = int(snakemake.wildcards.seed)
stage = snakemake.wildcards.joint
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import load_model, save_model
from emkt.models import teacher_arch
from emkt.train import joint_train

pretrained, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
files = data_files(snakemake, config)
teacher, student = joint_train(config, seed, files, pretrained, snakemake.output.history, device, resume)
save_model(snakemake.output.teacher, teacher, "teacher", teacher_arch(config, snakemake.params.kind),
           config["input_size"], {"stage": stage, "seed": seed})
save_model(snakemake.output.student, student, "student", config["student"], config["input_size"],
           {"condition": stage, "seed": seed})
resume.clear()
