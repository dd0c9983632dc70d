"""Mean-teacher consistency training of a student on labelled images plus the unlabelled pool."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
with TrainingJob(snakemake, seed) as job:
    from emkt.checkpoints import kept_epoch_extra
    from emkt.training.mean_teacher import mean_teacher_train

    student, start = job.starting_student()  # mean_teacher.init
    trained = job.train(mean_teacher_train, student, from_trained=start is not None)
    job.save_segmenter(snakemake.output.model, trained.student, "student", job.config["student"],
                       {"condition": "mean_teacher", "seed": seed, **kept_epoch_extra(trained.kept_epoch, start)})
