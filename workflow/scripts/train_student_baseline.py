"""Stage 2: the BCE-only student baseline, from scratch."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.training.supervised import train_student_baseline

files = data_files(snakemake, config)
student = train_student_baseline(config, seed, files, snakemake.output.history, device, resume)
save_segmentation_network(snakemake, config, device, snakemake.output.model, student, "student", config["student"],
                          {"condition": "baseline", "seed": seed}, seed=seed)
resume.clear()
