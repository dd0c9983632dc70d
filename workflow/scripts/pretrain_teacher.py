"""Stage 1: pretrain a teacher (the Critic or the error-map UNet) on corrupted ground-truth masks."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
kind = snakemake.params.kind
with TrainingJob(snakemake, seed) as job:
    from emkt.training.teacher import pretrain_teacher

    teacher = job.train(pretrain_teacher, kind=kind)
    job.save_teacher(snakemake.output.model, teacher, kind, {"stage": snakemake.wildcards.pretrained, "seed": seed})
