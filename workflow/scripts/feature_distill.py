"""Feature and response distillation of a network into the small ViT student."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import SEGMENTATION_KINDS, load_model
from emkt.training.distillation import feature_distill

teacher, _ = load_model(snakemake.input.teacher, expected_kind=SEGMENTATION_KINDS)
student = feature_distill(config, seed, data_files(snakemake, config), teacher, snakemake.output.history, device, resume)
save_segmentation_network(snakemake, config, device, snakemake.output.model, student, "student",
                          config["feature_distillation"]["student"], {"condition": "feature_distilled", "seed": seed},
                          seed=seed)
resume.clear()
