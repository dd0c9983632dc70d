"""Stage 3: joint teacher-student training from a pretrained teacher (either kind)."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
stage = snakemake.wildcards.joint
with TrainingJob(snakemake, seed) as job:
    from emkt.checkpoints import load_model
    from emkt.training.teacher import joint_train

    pretrained, _ = load_model(snakemake.input.teacher, expected_kind="teacher")
    teacher, student = job.train(joint_train, pretrained)
    job.save_teacher(snakemake.output.teacher, teacher, snakemake.params.kind, {"stage": stage, "seed": seed})
    job.save_segmenter(snakemake.output.student, student, "student", job.config["student"],
                       {"condition": stage, "seed": seed})
