# Trained networks written as bioimage.io model packages (config 'export'), as
# `python -m emkt export` does; each package must pass bioimageio.core's test.


rule export_network:
    input:
        model=prediction_model,
        tables=export_tables,
        sample=lambda wildcards: [EXPORT["sample"]] if EXPORT.get("sample") else [],
    output:
        directory("results/export/{condition}_{seed}"),
    params:
        export=EXPORT,
    log:
        "results/logs/export_network/{condition}_{seed}.log",
    benchmark:
        "results/benchmarks/export_network/{condition}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/export_network.py"
