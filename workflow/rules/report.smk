STUDENT_METRICS = ["iou", "dice", "accuracy", "precision", "recall", "ece", "mce", "object_f1", "pq"]
# The metrics compared across the test split and the external sets.
DATASET_METRICS = ["iou", "dice", "object_f1", "pq"]
# With the expansion condition: its variants against the joint student (paired over seeds).
EXPANSION_METRICS = ["iou", "dice", "object_f1"]
# Their tables: the report (test split) and the selection (validation split) apart, like the summary.
EXPANSION_TABLES = (
    {"expansion": "results/tables/expansion.md", "expansion_csv": "results/tables/expansion.csv",
     "expansion_selection": "results/tables/expansion_selection.md",
     "expansion_selection_csv": "results/tables/expansion_selection.csv"}
    if "expansion" in CONDITIONS else {}
)
# With the mean teacher: the other students that learn from the pool (expanded, pseudo-labelled)
# against it, the field's standard semi-supervised rival, on the same pool and budget.
POOL_ROWS = [row for row in STUDENTS if row.startswith("expanded_") or row == "pseudo_labelled"]
RIVAL_TABLES = (
    {"rivals": "results/tables/rivals.md", "rivals_csv": "results/tables/rivals.csv",
     "rivals_selection": "results/tables/rivals_selection.md",
     "rivals_selection_csv": "results/tables/rivals_selection.csv"}
    if "mean_teacher" in CONDITIONS and POOL_ROWS else {}
)
# The teachers as proofreaders on the external sets (emkt.review), with teachers and external sets.
PROOFREADING_TABLES = (
    {"proofreading": "results/tables/proofreading.md", "proofreading_csv": "results/tables/proofreading.csv"}
    if PROOFREADING else {}
)
EVALUATIONS = [f"results/eval/student_{c}_{{seed}}.csv" for c in STUDENTS] + [
    f"results/eval/reference_{c}_{{seed}}.csv" for c in REFERENCES
]
# The prediction panel: every student and the ensemble (the other references are its members).
PANEL = [f"results/eval/student_{c}_{SEEDS[0]}_panel.npz" for c in STUDENTS] + (
    [f"results/eval/reference_ensemble_{SEEDS[0]}_panel.npz"] if "ensemble" in REFERENCES else []
)


rule aggregate:
    input:
        students=expand(EVALUATIONS, seed=SEEDS),
        external=external_evaluations(),
        teachers=expand("results/eval/teacher_{stage}_{seed}.csv", stage=TEACHER_STAGES, seed=SEEDS),
        per_image=expand(per_image_tables(EVALUATIONS), seed=SEEDS),
        external_per_image=per_image_tables(external_evaluations()),
        proofreading=proofreading_outputs("proofreading"),
    output:
        long="results/tables/metrics_long.csv",
        # the report (test split, external sets) and the selection (validation split) apart
        csv=report("results/tables/summary.csv", caption="../report/summary.rst", category="Summary"),
        markdown="results/tables/summary.md",
        # the test split's few numbers to read first (`make demo` prints it)
        headline=report("results/tables/headline.md", caption="../report/headline.rst", category="Summary"),
        selection_csv="results/tables/selection.csv",
        selection="results/tables/selection.md",
        **EXPANSION_TABLES,
        **RIVAL_TABLES,
        **{name: report(path, caption="../report/proofreading.rst", category="Summary") if name == "proofreading"
           else path for name, path in PROOFREADING_TABLES.items()},
    params:
        expansion_rows=[row for row in STUDENT_CONDITIONS if row not in ("baseline", "joint")],
        expansion_metrics=EXPANSION_METRICS,
        pool_rows=POOL_ROWS,
        bootstrap_replicates=config["evaluate"]["bootstrap_replicates"],
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/aggregate.py"


rule plot_metrics:
    input:
        "results/tables/metrics_long.csv",
    output:
        report("results/figures/metrics.png", caption="../report/metrics.rst", category="Figures"),
    params:
        metrics=STUDENT_METRICS,
    log:
        "results/logs/plot_metrics.log",
    benchmark:
        "results/benchmarks/plot_metrics.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_metrics.py"


rule plot_datasets:
    input:
        "results/tables/metrics_long.csv",
    output:
        report("results/figures/datasets.png", caption="../report/datasets.rst", category="Figures"),
    params:
        metrics=DATASET_METRICS,
    log:
        "results/logs/plot_datasets.log",
    benchmark:
        "results/benchmarks/plot_datasets.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_datasets.py"


rule plot_speed_accuracy:
    input:
        "results/tables/metrics_long.csv",
    output:
        report("results/figures/speed_accuracy.png", caption="../report/speed_accuracy.rst", category="Figures"),
    log:
        "results/logs/plot_speed_accuracy.log",
    benchmark:
        "results/benchmarks/plot_speed_accuracy.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_speed_accuracy.py"


rule plot_teacher_scatter:
    input:
        expand("results/eval/teacher_{stage}_{seed}_per_tile.csv", stage=TEACHER_STAGES, seed=SEEDS),
    output:
        report("results/figures/teacher_scatter.png", caption="../report/teacher_scatter.rst", category="Figures"),
    log:
        "results/logs/plot_teacher_scatter.log",
    benchmark:
        "results/benchmarks/plot_teacher_scatter.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_teacher_scatter.py"


rule plot_training_curves:
    input:
        expand("results/history/{stage}_{seed}.csv", stage=HISTORY_STAGES, seed=SEEDS),
    output:
        report("results/figures/training_curves.png", caption="../report/training_curves.rst", category="Figures"),
    params:
        stages=HISTORY_STAGES,
        seeds=SEEDS,
    log:
        "results/logs/plot_training_curves.log",
    benchmark:
        "results/benchmarks/plot_training_curves.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_training_curves.py"


rule plot_predictions:
    input:
        PANEL,
    output:
        report("results/figures/predictions.png", caption="../report/predictions.rst", category="Figures"),
    params:
        conditions=[*STUDENTS, *(["ensemble"] if "ensemble" in REFERENCES else [])],
        max_images=config["evaluate"]["panel_images"],
    log:
        "results/logs/plot_predictions.log",
    benchmark:
        "results/benchmarks/plot_predictions.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["report"]
    script:
        "../scripts/plot_predictions.py"


if PROOFREADING:

    rule plot_review_curves:
        input:
            curves=proofreading_outputs("review_curves"),
            examples=proofreading_outputs("review_examples"),
        output:
            curves=report("results/figures/review_curves.png", caption="../report/review_curves.rst",
                          category="Figures"),
            examples=report("results/figures/review_examples.png", caption="../report/review_examples.rst",
                            category="Figures"),
        log:
            "results/logs/plot_review_curves.log",
        benchmark:
            "results/benchmarks/plot_review_curves.tsv"
        threads: config["resources"]["light"]["threads"]
        resources:
            **job_resources("light"),
        conda:
            ENVS["report"]
        script:
            "../scripts/plot_review_curves.py"
