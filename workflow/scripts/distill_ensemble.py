"""Ensemble distillation: a ViT student from scratch on the GT and the ensemble's soft labels."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.store import SoftLabelStore
from emkt.training.distillation import distill_from_soft_labels

student = distill_from_soft_labels(config, seed, data_files(snakemake, config),
                                   SoftLabelStore(snakemake.input.soft_labels), snakemake.output.history, device, resume)
save_segmentation_network(snakemake, config, device, snakemake.output.model, student, "student", config["student"],
                          {"condition": "ensemble_distilled", "seed": seed}, seed=seed)
resume.clear()
