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
ENV = "../../envs/emkt.yaml"
HISTORY_STAGES = ["teacher_pretrained", "student_baseline", "joint", "student_expanded"]


wildcard_constraints:
    seed=r"\d+",
    condition="|".join(STUDENT_CONDITIONS),
    stage="|".join(TEACHER_STAGES),


def job_resources(kind):
    """Resources of a kind of job (config 'resources.<kind>'), without threads."""
    return {k: v for k, v in config["resources"][kind].items() if k != "threads"}


def data_dirs():
    """Where the labelled and unlabelled images are, for the configured data source."""
    if config["data"]["source"] == "synthetic":
        return {
            "labelled_dir": "results/data/synthetic/cem_mitolab",
            "unlabelled_dir": "results/data/synthetic/unlabelled",
        }
    return {
        "labelled_dir": config["data"]["labelled_dir"],
        "unlabelled_dir": config["data"]["unlabelled_dir"],
    }


def generated_data(wildcards):
    """The generated data set when the source is synthetic; nothing to build otherwise."""
    if config["data"]["source"] == "synthetic":
        return "results/data/synthetic"
    return []


def student_model(condition, seed):
    return f"results/models/student_{condition}_{seed}.pth"


def training_params(*sections):
    """Config sections a training stage depends on; as rule params, changing them reruns it."""
    return {section: config[section] for section in ("input_size", "train", "loader", *sections)}
