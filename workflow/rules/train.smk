# Training stages, one job per seed. The stage's settings are rule params, so changing
# them (and only them) reruns the stage; the shared settings are params too.



rule pretrain_teacher:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        model="results/models/teacher_pretrained_{seed}.pth",
        history="results/history/teacher_pretrained_{seed}.csv",
    params:
        state=training_state("pretrain_teacher"),
        **training_params("teacher", "teacher_pretrain"),
    log:
        "results/logs/pretrain_teacher/{seed}.log",
    benchmark:
        "results/benchmarks/pretrain_teacher/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/pretrain_teacher.py"


rule train_student_baseline:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        model="results/models/student_baseline_{seed}.pth",
        history="results/history/student_baseline_{seed}.csv",
    params:
        state=training_state("train_student_baseline"),
        **training_params("student", "student_baseline"),
    log:
        "results/logs/train_student_baseline/{seed}.log",
    benchmark:
        "results/benchmarks/train_student_baseline/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/train_student_baseline.py"


rule joint_train:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        teacher="results/models/teacher_pretrained_{seed}.pth",
    output:
        teacher="results/models/teacher_joint_{seed}.pth",
        student="results/models/student_joint_{seed}.pth",
        history="results/history/joint_{seed}.csv",
    params:
        state=training_state("joint_train"),
        **training_params("student", "teacher", "joint"),
    log:
        "results/logs/joint_train/{seed}.log",
    benchmark:
        "results/benchmarks/joint_train/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/joint_train.py"


rule expand_student:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        pool=POOL_STORE,
        student="results/models/student_joint_{seed}.pth",
        teacher="results/models/teacher_joint_{seed}.pth",
    output:
        model="results/models/student_expanded_{seed}.pth",
        history="results/history/student_expanded_{seed}.csv",
    params:
        state=training_state("expand_student"),
        **training_params("expand"),
    log:
        "results/logs/expand_student/{seed}.log",
    benchmark:
        "results/benchmarks/expand_student/{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/expand_student.py"
