# One job per seed evaluates all its segmentation networks, students and references alike,
# with the same metrics on the same test images (one long-format CSV each), and one job per
# seed all its teachers: every job imports torch and MONAI first, which at demo scale takes
# longer than scoring a network. Touching one checkpoint reruns its seed's evaluations.


rule evaluate_networks:
    input:
        models=evaluated_models,
        agreement=lambda wildcards: list(agreement_references(wildcards.seed).values()),
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        **evaluation_outputs("results/eval", {"metrics": ".csv", "per_image": "_per_image.csv", "panel": "_panel.npz"}),
    params:
        networks=evaluated_networks(),
        agreement=lambda wildcards: agreement_references(wildcards.seed),
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
    log:
        "results/logs/evaluate_networks/{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_networks/{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_networks.py"


rule evaluate_teachers:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        teachers=[f"results/models/teacher_{stage}_{{seed}}.pth" for stage in TEACHER_STAGES],
        students=[student_model(c, "{seed}") for c in STUDENT_CONDITIONS],
    output:
        metrics=[f"results/eval/teacher_{stage}_{{seed}}.csv" for stage in TEACHER_STAGES],
        per_tile=[f"results/eval/teacher_{stage}_{{seed}}_per_tile.csv" for stage in TEACHER_STAGES],
    params:
        stages=TEACHER_STAGES,
        conditions=STUDENT_CONDITIONS,
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
        # the true loss per tile is the students' BCE with this weight, as the teachers predict it
        pos_weight=config["train"]["pos_weight"],
    log:
        "results/logs/evaluate_teachers/{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_teachers/{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_teachers.py"


# External labelled sets (config 'external_test'): indexed like the labelled data (a labelled
# volume section by section), then every student and reference network of every seed is scored
# on them with the test split's metrics, and every teacher of the seed as a proofreader of its
# students (emkt.proofread).


rule index_external:
    input:
        external_files,
    output:
        index="results/external/{external}/index.csv",
        excluded="results/external/{external}/excluded.csv",
    params:
        labelled_dir=lambda wildcards: EXTERNAL[wildcards.external].get("dir"),
        unlabelled_dir=None,
        # a labelled volume (image and labels) instead of a folder: indexed section by section
        volume=lambda wildcards: external_volume(wildcards.external),
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
        models=evaluated_models,
        index="results/external/{external}/index.csv",
        teachers=[f"results/models/teacher_{stage}_{{seed}}.pth" for stage in TEACHER_STAGES] if PROOFREADING else [],
    output:
        **evaluation_outputs("results/eval/external/{external}", {"metrics": ".csv", "per_image": "_per_image.csv"}),
        **proofreading_outputs(),
    params:
        networks=evaluated_networks(),
        evaluate=config["evaluate"],
        ignore_label=config["data"]["ignore_label"],
        # the true loss is the students' BCE with this weight, as the teachers predict it
        proofread={"stages": TEACHER_STAGES, "students": STUDENT_CONDITIONS, "example": REVIEW_EXAMPLE,
                   "pos_weight": config["train"]["pos_weight"]} if PROOFREADING else None,
    log:
        "results/logs/evaluate_external/{external}/{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_external/{external}/{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_external.py"
