"""A convolutional segmenter (config 'segmenters'), trained with BCE like the baseline student."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.params.member_seed)
name = snakemake.wildcards.segmenter
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.models import build_segmenter
from emkt.training.supervised import train_segmenter

arch = config["segmenters"][name]
model = train_segmenter(config, seed, data_files(snakemake, config), build_segmenter(arch, config["input_size"]),
                        arch["epochs"], snakemake.output.history, device, resume, stage=f"segmenter_{name}")
save_segmentation_network(snakemake, config, device, snakemake.output.model, model, "segmenter", arch,
                          {"condition": name, "seed": int(snakemake.wildcards.seed), "member_seed": seed}, seed=seed)
resume.clear()
