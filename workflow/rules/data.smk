rule generate_synthetic_data:
    output:
        directory("results/data/synthetic"),
    log:
        "results/logs/generate_synthetic_data.log",
    benchmark:
        "results/benchmarks/generate_synthetic_data.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENV
    script:
        "../scripts/generate_synthetic.py"


rule index_data:
    input:
        generated_data,
    output:
        labelled="results/data/labelled.csv",
        unlabelled="results/data/unlabelled.csv",
    params:
        **data_dirs(),
    log:
        "results/logs/index_data.log",
    benchmark:
        "results/benchmarks/index_data.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENV
    script:
        "../scripts/index_data.py"


rule split_data:
    input:
        "results/data/labelled.csv",
    output:
        "results/splits/datasplit.csv",
    params:
        split=config["split"],
    log:
        "results/logs/split_data.log",
    benchmark:
        "results/benchmarks/split_data.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENV
    script:
        "../scripts/split_data.py"
