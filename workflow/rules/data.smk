# Data: download and extract (source 'empiar') or generate (source 'synthetic'), then the
# same index -> split -> screen -> pack rules for every source (the pool is packed without
# the copies of val/test images that screen_pool finds). The split CSV and the store
# manifests are what training reads.


rule download_archive:
    output:
        archive_path("{archive}"),
    params:
        url_base=EMPIAR["url_base"],
        archive=lambda wildcards: ARCHIVES[wildcards.archive],
        retries=EMPIAR["retries"],
        timeout_s=EMPIAR["timeout_s"],
    log:
        "results/logs/download_archive/{archive}.log",
    benchmark:
        "results/benchmarks/download_archive/{archive}.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["data"]
    script:
        "../scripts/download_archive.py"


rule extract_archive:
    input:
        archive_path("{archive}"),
    output:
        manifest=f"{EMPIAR['download_dir']}/{{archive}}.manifest.csv",
    params:
        dest=lambda wildcards: extracted_dir(wildcards.archive),
    log:
        "results/logs/extract_archive/{archive}.log",
    benchmark:
        "results/benchmarks/extract_archive/{archive}.tsv"
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["data"]
    script:
        "../scripts/extract_archive.py"


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
        ENVS["data"]
    script:
        "../scripts/generate_synthetic.py"


rule index_data:
    input:
        raw_data,
    output:
        index="results/data/index.csv",
        excluded=report("results/data/excluded.csv", caption="../report/excluded.rst", category="Data"),
    params:
        **data_dirs(),
        max_excluded_fraction=config["data"]["max_excluded_fraction"],
        ignore_label=config["data"]["ignore_label"],
        report="results/logs/index_data.excluded.csv",
    log:
        "results/logs/index_data.log",
    benchmark:
        "results/benchmarks/index_data.tsv"
    threads: config["resources"]["data"]["threads"]
    resources:
        **job_resources("data"),
    conda:
        ENVS["data"]
    script:
        "../scripts/index_data.py"


rule pack_labelled_shard:
    input:
        index="results/data/index.csv",
    output:
        data="results/store/labelled/shard-{shard}.bin",
        table="results/store/labelled/shard-{shard}.csv",
    params:
        shards=STORE_SHARDS["labelled"],
    log:
        "results/logs/pack_labelled_shard/{shard}.log",
    benchmark:
        "results/benchmarks/pack_labelled_shard/{shard}.tsv"
    priority: PRIORITY['unblocks']
    threads: config["resources"]["data"]["threads"]
    resources:
        **job_resources("data"),
    conda:
        ENVS["data"]
    script:
        "../scripts/pack_shard.py"


rule pack_pool_shard:
    input:
        index="results/data/index.csv",
        excluded="results/data/pool_excluded.csv",
    output:
        data="results/store/pool/shard-{shard}.npy",
        origin="results/store/pool/shard-{shard}.origin.npy",
    params:
        shards=STORE_SHARDS["pool"],
        tile=config["store"]["pool_tile"],
    log:
        "results/logs/pack_pool_shard/{shard}.log",
    benchmark:
        "results/benchmarks/pack_pool_shard/{shard}.tsv"
    priority: PRIORITY['unblocks']
    threads: config["resources"]["data"]["threads"]
    resources:
        **job_resources("data"),
    conda:
        ENVS["data"]
    script:
        "../scripts/pack_shard.py"


rule store_manifest:
    input:
        lambda wildcards: store_shards(wildcards.store_set),
    output:
        "results/store/{store_set}.json",
    params:
        store_set=lambda wildcards: wildcards.store_set,
        tile=config["store"]["pool_tile"],
    log:
        "results/logs/store_manifest/{store_set}.log",
    benchmark:
        "results/benchmarks/store_manifest/{store_set}.tsv"
    priority: PRIORITY['unblocks']
    threads: config["resources"]["light"]["threads"]
    resources:
        **job_resources("light"),
    conda:
        ENVS["data"]
    script:
        "../scripts/store_manifest.py"


rule split_data:
    input:
        "results/data/index.csv",
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
        ENVS["data"]
    script:
        "../scripts/split_data.py"


rule screen_pool:
    input:
        index="results/data/index.csv",
        split="results/splits/datasplit.csv",
    output:
        report("results/data/pool_excluded.csv", caption="../report/pool_excluded.rst", category="Data"),
    params:
        screening=config["data"]["pool_screening"],
    log:
        "results/logs/screen_pool.log",
    benchmark:
        "results/benchmarks/screen_pool.tsv"
    threads: config["resources"]["data"]["threads"]
    resources:
        **job_resources("data"),
    conda:
        ENVS["data"]
    script:
        "../scripts/screen_pool.py"
