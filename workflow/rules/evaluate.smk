rule evaluate_student:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        model="results/models/student_{condition}_{seed}.pth",
    output:
        metrics="results/eval/student_{condition}_{seed}.csv",
        per_image="results/eval/student_{condition}_{seed}_per_image.csv",
        panel="results/eval/student_{condition}_{seed}_panel.npz",
    params:
        evaluate=config["evaluate"],
    log:
        "results/logs/evaluate_student/{condition}_{seed}.log",
    benchmark:
        "results/benchmarks/evaluate_student/{condition}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/evaluate_student.py"


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
