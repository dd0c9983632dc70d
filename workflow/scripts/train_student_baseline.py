"""Stage 2: the BCE-only student baseline, from scratch."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
with TrainingJob(snakemake, seed) as job:
    from emkt.training.supervised import train_student_baseline

    student = job.train(train_student_baseline)
    job.save_segmenter(snakemake.output.model, student, "student", job.config["student"],
                       {"condition": "baseline", "seed": seed})
