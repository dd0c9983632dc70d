import re
import sys
from pathlib import Path

# The config check lives in the package (it also runs inside every job); import it from
# the repository so that Snakemake needs no installed copy of the package.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from emkt.config import (ConfigError, expansion_rows, reference_networks, student_rows, teacher_kinds, teacher_stage,
                         validate_config, variant_teacher_kinds)
from emkt.cluster import job_resources as distributed_job_resources
from emkt.data import TIFF_SUFFIXES, find_images, find_volumes

try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


SEEDS = [int(seed) for seed in config["seeds"]]
CONDITIONS = config["conditions"]
SEGMENTERS = config["segmenters"]
ENSEMBLE = config["ensemble_distillation"]
PSEUDO = config["pseudo_label"]
FEATURE = config["feature_distillation"]
# Students the loss-predicting teachers are evaluated on (the expansion condition's rows).
STUDENT_CONDITIONS = ["baseline", *expansion_rows(config)] if "expansion" in CONDITIONS else ["baseline"]
VARIANTS = config["expand"]["variants"] if "expansion" in CONDITIONS else []
# Teacher stages by kind: pretrained, joint (the Critic), pretrained_error_map, joint_error_map.
STAGE_KINDS = {teacher_stage(kind, stage): kind for kind in teacher_kinds(config) for stage in ("pretrained", "joint")}
TEACHER_STAGES = list(STAGE_KINDS)
# Every student row of the table, in the order of the conditions list, and the reference rows:
# the segmenters and the ensemble that some condition uses (emkt.config).
STUDENTS = student_rows(config)
REFERENCES = reference_networks(config)
TRAINED_SEGMENTERS = [name for name in REFERENCES if name in SEGMENTERS]
FIGURES = [
    "results/figures/metrics.png",
    "results/figures/speed_accuracy.png",
    "results/figures/training_curves.png",
    "results/figures/predictions.png",
] + (["results/figures/teacher_scatter.png"] if TEACHER_STAGES else [])
# External labelled sets and prediction folders by name (config 'external_test', 'predict').
EXTERNAL = {entry["name"]: entry for entry in config["external_test"]}
PREDICT = {entry["name"]: entry for entry in config["predict"]}
EXPORT = config["export"]
if EXTERNAL:
    FIGURES.append("results/figures/datasets.png")
# The teachers as proofreaders of the students on every external set (emkt.proofread): with
# teachers and external sets only. The review figure shows the worst images by a joint
# error-map teacher where one is trained (it has a map to show), else the joint Critic, for
# the last expansion row (what the condition delivers).
PROOFREADING = bool(EXTERNAL and TEACHER_STAGES)
REVIEW_EXAMPLE = (
    [next((s for s in TEACHER_STAGES if s.startswith("joint") and STAGE_KINDS[s] == "error_map"), "joint"),
     STUDENT_CONDITIONS[-1]]
    if PROOFREADING else None
)
if PROOFREADING:
    FIGURES += ["results/figures/review_curves.png", "results/figures/review_examples.png"]
# Scheduling priorities (Snakemake runs the ready job of highest priority first): the light
# store jobs that unblock training first, then the longest chain of a seed (teacher
# pretraining, joint training, expansion), then what several conditions start from (the
# baseline student, the segmenters, soft and pseudo-labels), so that the shorter jobs fill
# the cores at the end instead of a chain holding up the evaluation.
PRIORITY = {"unblocks": 3, "longest_chain": 2, "shared_start": 1}
# One conda env per rule family (envs/*.yaml, paths relative to the rule files).
ENVS = {family: f"../../envs/{family}.yaml" for family in ("data", "train", "report")}
LABELLED_STORE = "results/store/labelled.json"
POOL_STORE = "results/store/pool.json"
STORE_SHARDS = {"labelled": config["store"]["labelled_shards"], "pool": config["store"]["pool_shards"]}
# EMPIAR archives by name (the zip's file name without .zip): the labelled and the pool archive.
EMPIAR = config["data"]["empiar"]
ARCHIVES = {Path(EMPIAR[role]["file"]).stem: dict(EMPIAR[role], role=role) for role in ("labelled", "unlabelled")}
HISTORY_STAGES = (
    [f"teacher_{stage}" for stage in TEACHER_STAGES if stage.startswith("pretrained")]
    + [f"segmenter_{name}" for name in TRAINED_SEGMENTERS]
    + [student if student in STAGE_KINDS else f"student_{student}" for student in STUDENTS]
)


wildcard_constraints:
    seed=r"\d+",
    shard=r"\d{5}",
    store_set="labelled|pool",
    archive="|".join(re.escape(name) for name in ARCHIVES),
    role="student|reference",
    condition="|".join([*STUDENTS, *REFERENCES]),
    segmenter="|".join(SEGMENTERS) or "(?!)",
    stage="|".join(TEACHER_STAGES) or "(?!)",
    pretrained="|".join(s for s in TEACHER_STAGES if s.startswith("pretrained")) or "(?!)",
    joint="|".join(s for s in TEACHER_STAGES if s.startswith("joint")) or "(?!)",
    variant="|".join(VARIANTS) or "(?!)",
    external="|".join(re.escape(name) for name in EXTERNAL) or "(?!)",
    prediction="|".join(re.escape(name) for name in PREDICT) or "(?!)",


def job_resources(kind):
    """Resources of a kind of job (config 'resources.<kind>'), without threads and retries."""
    return {k: v for k, v in config["resources"][kind].items() if k not in ("threads", "retries")}


def training_resources():
    """Resources of a training job: config resources.train with the GPUs and, for several
    nodes or the srun launcher, the SLURM task layout of config 'distributed'
    (emkt.cluster.job_resources)."""
    return distributed_job_resources(job_resources("train"), config["distributed"])


def training_state(rule, job="{seed}"):
    """Where a training rule keeps its resumable state (outside its outputs, which
    Snakemake deletes when a job fails)."""
    return f"results/state/{rule}/{job}.pt"


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


def expansion_teachers(wildcards):
    """The joint teachers an expansion variant minimises: one per kind of the variant, and
    for a committee also those of the next expand.committee.seeds - 1 seeds (cyclically)."""
    seeds = [int(wildcards.seed)]
    if wildcards.variant == "committee":
        start = SEEDS.index(seeds[0])
        seeds = [SEEDS[(start + k) % len(SEEDS)] for k in range(config["expand"]["committee"]["seeds"])]
    return [f"results/models/teacher_{teacher_stage(kind, 'joint')}_{seed}.pth"
            for kind in variant_teacher_kinds(config, wildcards.variant) for seed in seeds]


def student_model(condition, seed):
    return f"results/models/student_{condition}_{seed}.pth"


def network_model(name, seed="{seed}"):
    """The checkpoint of a network named in the config: 'baseline' (the baseline student),
    'ensemble' or a segmenter."""
    return student_model("baseline", seed) if name == "baseline" else f"results/models/reference_{name}_{seed}.pth"


def evaluated_networks():
    """Every segmentation network of a seed that the evaluation jobs score, as (role,
    condition): the student rows, then the reference rows."""
    return [("student", c) for c in STUDENTS] + [("reference", c) for c in REFERENCES]


def evaluation_outputs(folder, suffixes):
    """A seed's evaluation files in ``folder``, one list per suffix: one file per network."""
    return {name: [f"{folder}/{role}_{condition}_{{seed}}{suffix}" for role, condition in evaluated_networks()]
            for name, suffix in suffixes.items()}


def evaluated_models(wildcards):
    """The checkpoints of a seed's evaluated networks, in the order of evaluated_networks()."""
    return [f"results/models/{role}_{condition}_{wildcards.seed}.pth" for role, condition in evaluated_networks()]


def agreement_references(seed="{seed}"):
    """The network each evaluated network's agreement is measured against, by condition: the
    feature-distilled student's teacher (its agreement is part of that condition's result)."""
    if "feature_distilled" not in STUDENTS:
        return {}
    return {"feature_distilled": network_model(FEATURE["teacher"], seed)}


def member_seed(wildcards):
    """Each segmenter trains with its own seed: 1000 * seed + its position in 'segmenters'."""
    return 1000 * int(wildcards.seed) + 1 + list(SEGMENTERS).index(wildcards.segmenter)


def pseudo_label_output(path):
    """Pseudo-label shards are as large as the pool: temporary unless pseudo_label.keep_shards."""
    return path if PSEUDO["keep_shards"] else temp(path)


def pseudo_label_shards(wildcards):
    return [f"results/pseudo/{wildcards.seed}/shard-{k:05d}.npy" for k in range(STORE_SHARDS["pool"])]


def training_params(*sections):
    """Config sections a training stage depends on; as rule params, changing them reruns it."""
    params = {section: config[section] for section in ("input_size", "train", "loader", *sections)}
    return {**params, "ignore_label": config["data"]["ignore_label"]}


def external_files(wildcards):
    """The external set's TIFFs (or its two volumes), as inputs: adding or changing one re-indexes the set."""
    volume = external_volume(wildcards.external)
    if volume is not None:
        return list(volume)
    return [str(p) for p in find_images(EXTERNAL[wildcards.external]["dir"], recursive=True, suffixes=TIFF_SUFFIXES)]


def external_volume(name):
    """(image, labels) of an external set given as a labelled volume, else None."""
    entry = EXTERNAL[name]
    return (entry["image"], entry["labels"]) if "image" in entry else None


def external_evaluations():
    """Every network's evaluation on every external set: what the summary table adds."""
    return [f"results/eval/external/{name}/{role}_{condition}_{seed}.csv"
            for name in EXTERNAL for role, condition in evaluated_networks() for seed in SEEDS]


def proofreading_outputs(kind="all"):
    """An external set's proofreading files of a seed (kind "all", for evaluate_external), or
    every set's and seed's files of one kind; nothing without teachers or external sets."""
    if not PROOFREADING:
        return {} if kind == "all" else []
    files = {"proofreading": "results/eval/external/{external}/proofreading_{seed}.csv",
             "review_curves": "results/eval/external/{external}/review_curves_{seed}.csv",
             "review_examples": "results/eval/external/{external}/review_examples_{seed}.npz"}
    if kind == "all":
        return files
    seeds = SEEDS[:1] if kind == "review_examples" else SEEDS  # the figure shows the first seed
    return [files[kind].format(external=name, seed=seed) for name in EXTERNAL for seed in seeds]


def per_image_tables(evaluations):
    """The per-image tables (pixel counts for the image bootstrap) beside evaluations' long CSVs."""
    return [path.removesuffix(".csv") + "_per_image.csv" for path in evaluations]


def network_role(condition):
    """'student' or 'reference': where a network named in the table keeps its checkpoint."""
    return "student" if condition in STUDENTS else "reference"


def prediction_outputs():
    """The folders of every configured prediction (config 'predict')."""
    return [f"results/predictions/{name}/{network}_{seed}"
            for name, entry in PREDICT.items() for network in entry["networks"] for seed in entry.get("seeds") or SEEDS]


def prediction_model(wildcards):
    return f"results/models/{network_role(wildcards.condition)}_{wildcards.condition}_{wildcards.seed}.pth"


def prediction_teacher(wildcards):
    """The teacher checkpoint that proofreads a prediction (config 'predict' entry 'teacher'), or none."""
    stage = PREDICT[wildcards.prediction].get("teacher")
    return [f"results/models/teacher_{stage}_{wildcards.seed}.pth"] if stage else []


def prediction_images(wildcards):
    """The folder's images and volumes, as inputs: adding or changing one predicts the folder again."""
    folder = PREDICT[wildcards.prediction]["dir"]
    return [str(p) for p in find_images(folder, recursive=True) + find_volumes(folder, recursive=True)]


def export_outputs():
    """The bioimage.io package folders of the networks to export (config 'export')."""
    return [f"results/export/{network}_{seed}" for network in EXPORT["networks"]
            for seed in EXPORT.get("seeds") or SEEDS[:1]]


def export_tables(wildcards):
    """A network's evaluation tables of its seed, for its package's documentation: the test
    split and each external set."""
    name = f"{network_role(wildcards.condition)}_{wildcards.condition}_{wildcards.seed}.csv"
    return [f"results/eval/{name}", *[f"results/eval/external/{external}/{name}" for external in EXTERNAL]]
