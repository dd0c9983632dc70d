# Training stages, one job per seed. The stage's settings are rule params, so changing
# them (and only them) reruns the stage; the shared settings are params too.



# Teachers: {pretrained} is 'pretrained' (the Critic) or 'pretrained_error_map', {joint} is
# 'joint' or 'joint_error_map' (emkt.config.teacher_stage); each kind has its own joint student.


rule pretrain_teacher:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
    output:
        model="results/models/teacher_{pretrained}_{seed}.pth",
        history="results/history/teacher_{pretrained}_{seed}.csv",
    params:
        state=training_state("pretrain_teacher", "{pretrained}_{seed}"),
        kind=lambda wildcards: STAGE_KINDS[wildcards.pretrained],
        **training_params("teacher", "error_map_teacher", "teacher_pretrain"),
    log:
        "results/logs/pretrain_teacher/{pretrained}_{seed}.log",
    benchmark:
        "results/benchmarks/pretrain_teacher/{pretrained}_{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    priority: PRIORITY['longest_chain']
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
    priority: PRIORITY['shared_start']
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
        teacher=lambda wildcards: f"results/models/teacher_{teacher_stage(STAGE_KINDS[wildcards.joint], 'pretrained')}_{wildcards.seed}.pth",
    output:
        teacher="results/models/teacher_{joint}_{seed}.pth",
        student="results/models/student_{joint}_{seed}.pth",
        history="results/history/{joint}_{seed}.csv",
    params:
        state=training_state("joint_train", "{joint}_{seed}"),
        kind=lambda wildcards: STAGE_KINDS[wildcards.joint],
        **training_params("student", "teacher", "error_map_teacher", "joint"),
    log:
        "results/logs/joint_train/{joint}_{seed}.log",
    benchmark:
        "results/benchmarks/joint_train/{joint}_{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    priority: PRIORITY['longest_chain']
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/joint_train.py"


# Every expansion variant starts from the Critic's joint student; the teachers it reads are
# the joint teachers of the variant's kinds (a committee: of several seeds too).


rule expand_student:
    input:
        split="results/splits/datasplit.csv",
        labelled=LABELLED_STORE,
        pool=POOL_STORE,
        student="results/models/student_joint_{seed}.pth",
        teachers=expansion_teachers,
    output:
        model="results/models/student_expanded_{variant}_{seed}.pth",
        history="results/history/student_expanded_{variant}_{seed}.csv",
    params:
        state=training_state("expand_student", "{variant}_{seed}"),
        **training_params("joint", "teacher_pretrain", "expand"),
    log:
        "results/logs/expand_student/{variant}_{seed}.log",
    benchmark:
        "results/benchmarks/expand_student/{variant}_{seed}.tsv"
    retries: config["resources"]["train"].get("retries", 0)
    priority: PRIORITY['longest_chain']
    threads: config["resources"]["train"]["threads"]
    resources:
        **training_resources(),
    conda:
        ENVS["train"]
    script:
        "../scripts/expand_student.py"
