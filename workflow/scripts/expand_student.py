"""Stage 4: knowledge expansion of the joint student on the unlabelled pool, one variant."""

from jobsetup import TrainingJob

seed = int(snakemake.wildcards.seed)
variant = snakemake.wildcards.variant
with TrainingJob(snakemake, seed) as job:
    from emkt.checkpoints import kept_epoch_extra, load_model
    from emkt.training.expansion import expand_student

    student, _ = load_model(snakemake.input.student, expected_kind="student")
    teachers = [load_model(path, expected_kind="teacher")[0] for path in snakemake.input.teachers]
    expanded = job.train(expand_student, student, teachers, variant=variant)
    # the rule's input student is the joint student (row "joint"); epoch 0 is that student
    job.save_segmenter(snakemake.output.model, expanded.student, "student", job.config["student"],
                       {"condition": f"expanded_{variant}", "seed": seed,
                        **kept_epoch_extra(expanded.kept_epoch, "joint")})
