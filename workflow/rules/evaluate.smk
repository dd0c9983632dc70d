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
