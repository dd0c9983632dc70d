"""Stage 4: knowledge expansion of the joint student on the unlabelled pool, one variant."""

from jobsetup import data_files, save_segmentation_network, start_training_job, training_checkpointing

seed = int(snakemake.wildcards.seed)
variant = snakemake.wildcards.variant
config, device = start_training_job(snakemake, seed)
resume = training_checkpointing(snakemake, config, seed)

from emkt.checkpoints import kept_epoch_extra, load_model
from emkt.training.expansion import expand_student

student, _ = load_model(snakemake.input.student, expected_kind="student")
teachers = [load_model(path, expected_kind="teacher")[0] for path in snakemake.input.teachers]
files = data_files(snakemake, config)
expanded = expand_student(config, seed, files, student, teachers, snakemake.output.history, device, resume,
                          variant=variant)
# the rule's input student is the joint student (row "joint"); epoch 0 is that student
save_segmentation_network(snakemake, config, device, snakemake.output.model, expanded.student, "student",
                          config["student"], {"condition": f"expanded_{variant}", "seed": seed,
                                              **kept_epoch_extra(expanded.kept_epoch, "joint")}, seed=seed)
resume.clear()
