# Every segmentation network, students and references alike, goes through evaluate_model:
# the same metrics on the same test images, one long-format CSV each.


rule evaluate_model:
    input:
        unpack(evaluated_model),
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        metrics="results/eval/{role}_{condition}_{seed}.csv",
        per_image="results/eval/{role}_{condition}_{seed}_per_image.csv",
        panel="results/eval/{role}_{condition}_{seed}_panel.npz",
    params:
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
    log:
        "results/logs/evaluate_model/{role}_{condition}_{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_model/{role}_{condition}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_model.py"


rule evaluate_teacher:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        teacher="results/models/teacher_{stage}_{seed}.pth",
        students=[student_model(c, "{seed}") for c in STUDENT_CONDITIONS],
    output:
        metrics="results/eval/teacher_{stage}_{seed}.csv",
        per_tile="results/eval/teacher_{stage}_{seed}_per_tile.csv",
    params:
        conditions=STUDENT_CONDITIONS,
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
        # the true loss per tile is the students' BCE with this weight, as the teachers predict it
        pos_weight=config["train"]["pos_weight"],
    log:
        "results/logs/evaluate_teacher/{stage}_{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_teacher/{stage}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_teacher.py"


# External labelled sets (config 'external_test'): indexed like the labelled data, then every
# student and reference network of every seed is scored on them with the test split's metrics.


rule index_external:
    input:
        external_files,
    output:
        index="results/external/{external}/index.csv",
        excluded="results/external/{external}/excluded.csv",
    params:
        labelled_dir=lambda wildcards: EXTERNAL[wildcards.external]["dir"],
        unlabelled_dir=None,
        max_excluded_fraction=config["data"]["max_excluded_fraction"],
        ignore_label=config["data"]["ignore_label"],
        report="results/logs/index_external/{external}.excluded.csv",
    log:
        "results/logs/index_external/{external}.log",
    benchmark:
        "results/benchmarks/index_external/{external}.tsv"
    threads: config["resources"]["data"]["threads"]
    resources:
        **job_resources("data"),
    conda:
        ENVS["data"]
    script:
        "../scripts/index_data.py"


rule evaluate_external:
    input:
        model="results/models/{role}_{condition}_{seed}.pth",
        index="results/external/{external}/index.csv",
    output:
        metrics="results/eval/external/{external}/{role}_{condition}_{seed}.csv",
        per_image="results/eval/external/{external}/{role}_{condition}_{seed}_per_image.csv",
    params:
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
    log:
        "results/logs/evaluate_external/{external}/{role}_{condition}_{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_external/{external}/{role}_{condition}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_external.py"
