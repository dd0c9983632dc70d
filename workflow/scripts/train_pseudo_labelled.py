"""Pseudo-label self-training of a student on labelled images plus the pseudo-labelled pool."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
with TrainingJob(snakemake, seed) as job:
    import logging

    from emkt.calibration import pseudo_label_threshold
    from emkt.checkpoints import kept_epoch_extra, load_checkpoint
    from emkt.training.self_training import self_train

    settings = job.config["pseudo_label"]
    threshold = pseudo_label_threshold(settings["threshold"], settings["target_precision"],
                                       load_checkpoint(snakemake.input.teacher), snakemake.input.teacher)
    logging.getLogger("emkt").info("pseudo-label confidence threshold %.2f (pseudo_label.threshold: %s)", threshold,
                                   settings["threshold"])

    student, start = job.starting_student()  # pseudo_label.init
    trained = job.train(self_train, snakemake.input.pseudo, student, from_trained=start is not None,
                        threshold=threshold)
    job.save_segmenter(snakemake.output.model, trained.student, "student", job.config["student"],
                       {"condition": "pseudo_labelled", "seed": seed, "pseudo_label_threshold": threshold,
                        **kept_epoch_extra(trained.kept_epoch, start)})
