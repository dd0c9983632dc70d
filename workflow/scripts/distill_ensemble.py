"""Ensemble distillation: a ViT student from scratch on the GT and the ensemble's soft labels."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
with TrainingJob(snakemake, seed) as job:
    from emkt.store import SoftLabelStore
    from emkt.training.distillation import distill_from_soft_labels

    student = job.train(distill_from_soft_labels, SoftLabelStore(snakemake.input.soft_labels))
    job.save_segmenter(snakemake.output.model, student, "student", job.config["student"],
                       {"condition": "ensemble_distilled", "seed": seed})
