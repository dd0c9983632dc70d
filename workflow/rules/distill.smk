# The distillation conditions (config 'conditions'): convolutional segmenters and their
# ensemble, ensemble soft-label distillation, pseudo-label self-training and mean-teacher
# consistency training on the pool, and feature distillation into a small student. One job per
# seed (and per segmenter or pool shard).


rule train_segmenter:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        model="results/models/reference_{segmenter}_{seed}.pth",
        history="results/history/segmenter_{segmenter}_{seed}.csv",
    params:
        state=training_state("train_segmenter", "{segmenter}_{seed}"),
        member_seed=member_seed,
        arch=lambda wildcards: SEGMENTERS[wildcards.segmenter],
        **training_params(),
    log:
        "results/logs/train_segmenter/{segmenter}_{seed}.log",
    benchmark:
        "results/benchmarks/train_segmenter/{segmenter}_{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    priority: PRIORITY['shared_start']
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/train_segmenter.py"


rule ensemble_soft_labels:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        members=[network_model(name) for name in ENSEMBLE["members"]],
    output:
        model="results/models/reference_ensemble_{seed}.pth",
        table="results/soft_labels/ensemble_{seed}.csv",
        pixels="results/soft_labels/ensemble_{seed}.bin",
    params:
        members=ENSEMBLE["members"],
        temperature=ENSEMBLE["temperature"],
        evaluate=config["evaluate"],
    log:
        "results/logs/ensemble_soft_labels/{seed}.log",
    benchmark:
        "results/benchmarks/ensemble_soft_labels/{seed}.tsv"
    priority: PRIORITY['shared_start']
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/ensemble_soft_labels.py"


rule distill_ensemble:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        soft_labels="results/soft_labels/ensemble_{seed}.csv",
        pixels="results/soft_labels/ensemble_{seed}.bin",
    output:
        model="results/models/student_ensemble_distilled_{seed}.pth",
        history="results/history/student_ensemble_distilled_{seed}.csv",
    params:
        state=training_state("distill_ensemble"),
        **training_params("student", "ensemble_distillation"),
    log:
        "results/logs/distill_ensemble/{seed}.log",
    benchmark:
        "results/benchmarks/distill_ensemble/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/distill_ensemble.py"


rule pseudo_label_shard:
    input:
        shard="results/store/pool/shard-{shard}.npy",
        teacher=network_model(PSEUDO["teacher"]),
    output:
        pseudo_label_output("results/pseudo/{seed}/shard-{shard}.npy"),
    params:
        evaluate=config["evaluate"],
    log:
        "results/logs/pseudo_label_shard/{seed}_{shard}.log",
    benchmark:
        "results/benchmarks/pseudo_label_shard/{seed}_{shard}.tsv"
    priority: PRIORITY['shared_start']
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/pseudo_label_shard.py"


rule pseudo_label_manifest:
    input:
        pseudo_label_shards,
    output:
        "results/pseudo/{seed}.json",
    params:
        store_set="pseudo",
        tile=config["store"]["pool_tile"],
    log:
        "results/logs/pseudo_label_manifest/{seed}.log",
    benchmark:
        "results/benchmarks/pseudo_label_manifest/{seed}.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["data"]
    script:
        "../scripts/store_manifest.py"


rule train_pseudo_labelled:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        pool=POOL_STORE,
        pseudo="results/pseudo/{seed}.json",
        # The shards too, not only their manifest: temporary shards must outlive this job.
        shards=pseudo_label_shards,
        init=[student_model("baseline", "{seed}")] if PSEUDO["init"] == "baseline" else [],
        # its validation calibration chooses the confidence threshold ('auto')
        teacher=network_model(PSEUDO["teacher"]),
    output:
        model="results/models/student_pseudo_labelled_{seed}.pth",
        history="results/history/student_pseudo_labelled_{seed}.csv",
    params:
        state=training_state("train_pseudo_labelled"),
        **training_params("student", "expand", "pseudo_label"),
    log:
        "results/logs/train_pseudo_labelled/{seed}.log",
    benchmark:
        "results/benchmarks/train_pseudo_labelled/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/train_pseudo_labelled.py"


rule train_mean_teacher:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        pool=POOL_STORE,
        init=[student_model("baseline", "{seed}")] if config["mean_teacher"]["init"] == "baseline" else [],
    output:
        model="results/models/student_mean_teacher_{seed}.pth",
        history="results/history/student_mean_teacher_{seed}.csv",
    params:
        state=training_state("train_mean_teacher"),
        **training_params("student", "expand", "mean_teacher"),
    log:
        "results/logs/train_mean_teacher/{seed}.log",
    benchmark:
        "results/benchmarks/train_mean_teacher/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/train_mean_teacher.py"


rule feature_distill:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        teacher=network_model(FEATURE["teacher"]),
    output:
        model="results/models/student_feature_distilled_{seed}.pth",
        history="results/history/student_feature_distilled_{seed}.csv",
    params:
        state=training_state("feature_distill"),
        **training_params("feature_distillation"),
    log:
        "results/logs/feature_distill/{seed}.log",
    benchmark:
        "results/benchmarks/feature_distill/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/feature_distill.py"
