# Segmenting new images (config 'predict') with trained networks, as `python -m emkt predict`
# does: probability, mask and instance TIFFs per image, an OME-Zarr image per volume, and
# predictions.csv; with a teacher also its error maps and the review queue.


rule predict_images:
    input:
        model=prediction_model,
        images=prediction_images,
        teacher=prediction_teacher,
    output:
        directory("results/predictions/{prediction}/{condition}_{seed}"),
    params:
        folder=lambda wildcards: PREDICT[wildcards.prediction]["dir"],
        probability=lambda wildcards: PREDICT[wildcards.prediction].get("probability", "float32"),
        memory_mb=lambda wildcards: PREDICT[wildcards.prediction].get("memory_mb", 4096),
        link_3d=lambda wildcards: PREDICT[wildcards.prediction].get("link_3d", False),
        evaluate=config["evaluate"],
    log:
        "results/logs/predict_images/{prediction}/{condition}_{seed}.log",
    benchmark:
        "results/benchmarks/predict_images/{prediction}/{condition}_{seed}.tsv"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        **job_resources("evaluate"),
    conda:
        ENVS["train"]
    script:
        "../scripts/predict_images.py"
