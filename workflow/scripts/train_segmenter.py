"""A convolutional segmenter (config 'segmenters'), trained with BCE like the baseline student."""

from jobsetup import data_files, start_training_job, training_checkpointing

seed = int(snakemake.params.member_seed)
name = snakemake.wildcards.segmenter
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import save_model
from emkt.models import build_segmenter
from emkt.train import train_segmenter

arch = config["segmenters"][name]
model = train_segmenter(config, seed, data_files(snakemake, config), build_segmenter(arch, config["input_size"]),
                        arch["epochs"], snakemake.output.history, device, resume, stage=f"segmenter_{name}")
save_model(snakemake.output.model, model, "segmenter", arch, config["input_size"],
           {"condition": name, "seed": int(snakemake.wildcards.seed), "member_seed": seed})
resume.clear()
