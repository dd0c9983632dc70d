"""A convolutional segmenter (config 'segmenters'), trained with BCE like the baseline student."""

from jobsetup import TrainingJob

seed = int(snakemake.params.member_seed)
name = snakemake.wildcards.segmenter
with TrainingJob(snakemake, seed) as job:
    from emkt.models import build_segmenter
    from emkt.training.supervised import train_segmenter

    arch = job.config["segmenters"][name]
    model = job.train(train_segmenter, build_segmenter(arch, job.config["input_size"]), arch["epochs"],
                      stage=f"segmenter_{name}")
    job.save_segmenter(snakemake.output.model, model, "segmenter", arch,
                       {"condition": name, "seed": int(snakemake.wildcards.seed), "member_seed": seed})
