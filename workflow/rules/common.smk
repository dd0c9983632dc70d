import re
import sys
from pathlib import Path

# The config check lives in the package (it also runs inside every job); import it from
# the repository so that Snakemake needs no installed copy of the package.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from emkt.config import ConfigError, validate_config

try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


SEEDS = [int(seed) for seed in config["seeds"]]
STUDENT_CONDITIONS = ["baseline", "joint", "expanded"]
TEACHER_STAGES = ["pretrained", "joint"]
FIGURES = [
    "results/figures/metrics.png",
    "results/figures/teacher_scatter.png",
    "results/figures/training_curves.png",
    "results/figures/predictions.png",
]
# One conda env per rule family (envs/*.yaml, paths relative to the rule files).
ENVS = {family: f"../../envs/{family}.yaml" for family in ("data", "train", "report")}
LABELLED_STORE = "results/store/labelled.json"
POOL_STORE = "results/store/pool.json"
STORE_SHARDS = {"labelled": config["store"]["labelled_shards"], "pool": config["store"]["pool_shards"]}
# EMPIAR archives by name (the zip's file name without .zip): the labelled and the pool archive.
EMPIAR = config["data"]["empiar"]
ARCHIVES = {Path(EMPIAR[role]["file"]).stem: dict(EMPIAR[role], role=role) for role in ("labelled", "unlabelled")}
HISTORY_STAGES = ["teacher_pretrained", "student_baseline", "joint", "student_expanded"]


wildcard_constraints:
    seed=r"\d+",
    shard=r"\d{5}",
    store_set="labelled|pool",
    archive="|".join(re.escape(name) for name in ARCHIVES),
    condition="|".join(STUDENT_CONDITIONS),
    stage="|".join(TEACHER_STAGES),


def job_resources(kind):
    """Resources of a kind of job (config 'resources.<kind>'), without threads and retries."""
    return {k: v for k, v in config["resources"][kind].items() if k not in ("threads", "retries")}


def training_state(rule):
    """Where a training rule keeps its resumable state (outside its outputs, which
    Snakemake deletes when a job fails)."""
    return f"results/state/{rule}/{{seed}}.pt"


def data_dirs():
    """Where the labelled and unlabelled images are, for the configured data source."""
    source = config["data"]["source"]
    if source == "synthetic":
        return {
            "labelled_dir": "results/data/synthetic/cem_mitolab",
            "unlabelled_dir": "results/data/synthetic/unlabelled",
        }
    if source == "empiar":
        folders = {info["role"]: extracted_dir(name) for name, info in ARCHIVES.items()}
        return {"labelled_dir": folders["labelled"], "unlabelled_dir": folders["unlabelled"]}
    return {
        "labelled_dir": config["data"]["labelled_dir"],
        "unlabelled_dir": config["data"]["unlabelled_dir"],
    }


def archive_path(name):
    path = f"{EMPIAR['download_dir']}/downloads/{name}.zip"
    return path if EMPIAR["keep_archives"] else temp(path)


def extracted_dir(name):
    return f"{EMPIAR['download_dir']}/{name}"


def raw_data(wildcards):
    """Input of index_data: the generated set, the extracted archives' manifests, or
    nothing (a user's folders, outside the workflow)."""
    source = config["data"]["source"]
    if source == "synthetic":
        return ["results/data/synthetic"]
    if source == "empiar":
        return [f"{extracted_dir(name)}.manifest.csv" for name in ARCHIVES]
    return []


def store_shards(store_set):
    """The shard files a store's manifest lists (the pool's arrays, the labelled tables)."""
    suffix = ".npy" if store_set == "pool" else ".csv"
    return [f"results/store/{store_set}/shard-{k:05d}{suffix}" for k in range(STORE_SHARDS[store_set])]


def student_model(condition, seed):
    return f"results/models/student_{condition}_{seed}.pth"


def training_params(*sections):
    """Config sections a training stage depends on; as rule params, changing them reruns it."""
    return {section: config[section] for section in ("input_size", "train", "loader", *sections)}
