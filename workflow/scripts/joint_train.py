"""Stage 3: joint teacher-student training from a pretrained teacher (either kind)."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
stage = snakemake.wildcards.joint
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import load_model, save_model
from emkt.models import teacher_arch
from emkt.training.teacher import joint_train

pretrained, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
files = data_files(snakemake, config)
teacher, student = joint_train(config, seed, files, pretrained, snakemake.output.history, device, resume)
save_model(snakemake.output.teacher, teacher, "teacher", teacher_arch(config, snakemake.params.kind),
           config["input_size"], {"stage": stage, "seed": seed})
save_segmentation_network(snakemake, config, device, snakemake.output.student, student, "student", config["student"],
                          {"condition": stage, "seed": seed}, seed=seed)
resume.clear()
