"""Feature and response distillation of a network into the small ViT student."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
with TrainingJob(snakemake, seed) as job:
    from emkt.checkpoints import SEGMENTATION_KINDS, load_model
    from emkt.training.distillation import feature_distill

    teacher, _ = load_model(snakemake.input.teacher, expected_kind=SEGMENTATION_KINDS)
    student = job.train(feature_distill, teacher)
    job.save_segmenter(snakemake.output.model, student, "student", job.config["feature_distillation"]["student"],
                       {"condition": "feature_distilled", "seed": seed})
