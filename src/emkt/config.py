"""Config validation with messages that name the bad key and the allowed values.

Imported by the Snakefile as well as by the scripts, so it depends on nothing heavier than
jsonschema and PyYAML (both come with Snakemake).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Shipped inside the package (package data), so that a non-editable install validates too.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is missing, misspelt or out of range."""


# libyaml's parser where PyYAML was built with it: the schema parses in 0.02 s instead of 0.16 s,
# which every job and every config check pays
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: str | Path):
    with open(path) as handle:
        return yaml.load(handle, Loader=_SAFE_LOADER)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return _read_yaml(path)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = "the top level" if key == "<top level>" else f"'{key}'"
        return f"unknown config key(s) {extra} under {where}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key '{key}' = {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "required":
        return f"config section '{key}' is missing a key: {error.message}"
    description = error.schema.get("description")
    hint = f" ({description})" if description else ""
    return f"config key '{key}' = {error.instance!r}: {error.message}{hint}"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Check ``config`` against the JSON schema and the rules a schema cannot express.

    Raises ConfigError with one line per problem, each naming the key.
    """
    schema = schema if schema is not None else load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    problems = [_describe(error) for error in errors]
    if not problems:
        problems = _semantic_problems(config)
    if problems:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))
    return config


def _semantic_problems(config: dict) -> list[str]:
    problems = []
    split = config["split"]
    total = split["train"] + split["val"] + split["test"]
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        problems.append(
            f"config keys 'split.train' + 'split.val' + 'split.test' must sum to 1, "
            f"got {split['train']} + {split['val']} + {split['test']} = {total:g}"
        )
    size = config["input_size"]
    problems += _student_problems(config["student"], size) + _teacher_problems(config["teacher"], size)
    source = config["data"]["source"]
    for key in ("labelled_dir", "unlabelled_dir"):
        if source == "folder" and not config["data"][key]:
            problems.append(f"config key 'data.{key}' must be set when 'data.source' is 'folder'")
    if config["store"]["pool_tile"] < size:
        problems.append(f"config key 'store.pool_tile' = {config['store']['pool_tile']} must be at least "
                        f"'input_size' = {size} (expansion crops input_size windows from pool tiles)")
    if len(set(config["seeds"])) != len(config["seeds"]):
        problems.append(f"config key 'seeds' has duplicates: {config['seeds']}")
    return (problems + _condition_problems(config) + _distributed_problems(config) + _output_set_problems(config)
            + _error_map_problems(config))


def _error_map_problems(config: dict) -> list[str]:
    """The error-map UNet needs one stride fewer than channels, and whole feature maps; a
    committee can only draw teachers from seeds that are trained."""
    problems = []
    unet = config["error_map_teacher"]
    if len(unet["strides"]) != len(unet["channels"]) - 1:
        problems.append(f"config key 'error_map_teacher.strides' needs len(channels) - 1 = {len(unet['channels']) - 1} "
                        f"entries (a UNet level per channel, one stride between levels), got {len(unet['strides'])}")
    elif config["input_size"] % math.prod(unet["strides"]):
        problems.append(f"config key 'input_size' = {config['input_size']} must be divisible by the product of "
                        f"'error_map_teacher.strides' = {math.prod(unet['strides'])}")
    seeds = config["expand"]["committee"]["seeds"]
    if "committee" in config["expand"]["variants"] and seeds > len(config["seeds"]):
        problems.append(f"config key 'expand.committee.seeds' = {seeds} is more than the {len(config['seeds'])} "
                        f"trained seeds ('seeds' = {config['seeds']})")
    return problems


# The student rows of the summary table that each condition adds (baseline is always there);
# expansion's rows depend on its variants (expansion_rows).
CONDITION_STUDENTS = {
    "ensemble_distillation": ["ensemble_distilled"],
    "pseudo_label": ["pseudo_labelled"],
    "mean_teacher": ["mean_teacher"],
    "feature_distillation": ["feature_distilled"],
}
# Teacher kinds: the scalar MONAI Critic (section 'teacher') and the per-pixel error-map UNet
# (section 'error_map_teacher'); each is pretrained and joint-trained with its own student.
TEACHER_KINDS = ("critic", "error_map")


def variant_teacher_kinds(config: dict, variant: str) -> list[str]:
    """The joint-trained teacher kinds an expansion variant minimises the prediction of."""
    if variant == "error_map":
        return ["error_map"]
    if variant == "committee":
        return list(config["expand"]["committee"]["teachers"])
    return ["critic"]


def teacher_kinds(config: dict) -> list[str]:
    """Teacher kinds the listed conditions train: the Critic whenever expansion runs (every
    variant starts from its joint student), the error-map teacher when a variant uses it."""
    if "expansion" not in config["conditions"]:
        return []
    used = {kind for variant in config["expand"]["variants"] for kind in variant_teacher_kinds(config, variant)}
    return ["critic", *(kind for kind in TEACHER_KINDS[1:] if kind in used)]


def teacher_stage(kind: str, stage: str) -> str:
    """A teacher's stage name in file names and tables: 'pretrained', 'joint_error_map', ..."""
    return stage if kind == "critic" else f"{stage}_{kind}"


def expansion_rows(config: dict) -> list[str]:
    """The expansion condition's student rows: each teacher kind's joint student, then one
    expanded student per variant."""
    return [teacher_stage(kind, "joint") for kind in teacher_kinds(config)] + \
        [f"expanded_{variant}" for variant in config["expand"]["variants"]]


def condition_rows(config: dict, condition: str) -> list[str]:
    """The student rows one condition adds to the table."""
    return expansion_rows(config) if condition == "expansion" else CONDITION_STUDENTS.get(condition, [])


def student_rows(config: dict) -> list[str]:
    """Every student of the listed conditions, in the order of the conditions list."""
    return ["baseline", *(row for c in config["conditions"] for row in condition_rows(config, c))]


def networks_used(config: dict) -> list[str]:
    """Names of the networks the listed conditions learn from: 'baseline', 'ensemble' or segmenters."""
    conditions, members = config["conditions"], config["ensemble_distillation"]["members"]
    used = []
    if "ensemble_distillation" in conditions:
        used += [*members, "ensemble"]
    if "pseudo_label" in conditions:
        teacher = config["pseudo_label"]["teacher"]
        used += ["ensemble", *members] if teacher == "ensemble" else [teacher]
    if "feature_distillation" in conditions:
        used.append(config["feature_distillation"]["teacher"])
    return list(dict.fromkeys(used))


def reference_networks(config: dict) -> list[str]:
    """The reference rows: segmenters and the ensemble that some listed condition uses."""
    return [name for name in networks_used(config) if name != "baseline"]


def _output_set_problems(config: dict) -> list[str]:
    """External sets and prediction folders need distinct names, and prediction only names
    networks and seeds that the config trains."""
    problems = []
    for key in ("external_test", "predict"):
        names = [entry["name"] for entry in config[key]]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"config key '{key}' uses the name(s) {repeated} more than once")
    # the tables file rows by these names: a set named "val" would land in the selection table
    for split in ("test", "val"):
        if any(entry["name"] == split for entry in config["external_test"]):
            problems.append(f"config key 'external_test' names a set '{split}', the name of the {split} split; "
                            "choose another")
    for k, entry in enumerate(config["external_test"]):
        given = [key for key in ("dir", "image", "labels") if key in entry]
        if given not in (["dir"], ["image", "labels"]):
            problems.append(f"config key 'external_test.{k}' ({entry['name']}) has {given or 'none'} of dir, image, "
                            "labels; give either dir (a CEM-MitoLab-layout folder) or image and labels (a labelled volume)")
    trained = student_rows(config) + reference_networks(config)
    for k, entry in enumerate(config["predict"]):
        problems += _untrained_problems(f"predict.{k}", entry, trained, config["seeds"])
        stages = [teacher_stage(kind, stage) for kind in teacher_kinds(config) for stage in ("pretrained", "joint")]
        if entry.get("teacher") is not None and entry["teacher"] not in stages:
            problems.append(f"config key 'predict.{k}.teacher' is {entry['teacher']!r}, not a teacher the listed "
                            f"conditions train; allowed: {stages}")
    return problems + _export_problems(config, trained)


def _untrained_problems(key: str, entry: dict, trained: list[str], seeds: list[int]) -> list[str]:
    """The networks and seeds a section (key) names that the config does not train."""
    problems = []
    unknown = [name for name in entry["networks"] if name not in trained]
    if unknown:
        problems.append(f"config key '{key}.networks' names {unknown}, which the listed conditions do not train; "
                        f"allowed: {trained}")
    untrained = [seed for seed in entry.get("seeds") or [] if seed not in seeds]
    if untrained:
        problems.append(f"config key '{key}.seeds' names {untrained}, not in 'seeds' = {seeds}")
    return problems


def _export_problems(config: dict, trained: list[str]) -> list[str]:
    """Export names networks and seeds that the config trains; each citation has one link."""
    export = config["export"]
    problems = _untrained_problems("export", export, trained, config["seeds"])
    for k, entry in enumerate(export.get("cite") or []):
        if ("doi" in entry) == ("url" in entry):
            problems.append(f"config key 'export.cite.{k}' needs exactly one of 'doi' and 'url'")
    return problems


def _distributed_problems(config: dict) -> list[str]:
    settings = config["distributed"]
    world = settings["processes"] * settings["nodes"]
    problems = []
    if config["train"]["batch_size"] % world:
        problems.append(f"config key 'train.batch_size' = {config['train']['batch_size']} must be divisible by "
                        f"'distributed.processes' x 'distributed.nodes' = {world} (it is the global batch)")
    return problems


# SwinUNETR halves the resolution 5 times (patch embedding, then 4 stages); kept here, not
# imported from emkt.models, so that checking a config never imports torch.
SWIN_DOWNSAMPLING = 32


def _student_problems(student: dict, size: int) -> list[str]:
    """The chosen student type's constraints (the other types' settings are not used)."""
    kind = student["type"]
    if kind == "vitautoenc":
        return _vit_problems("student", student, size)
    if kind == "swinunetr":
        swin, problems = student["swinunetr"], []
        if size % SWIN_DOWNSAMPLING or size < 2 * SWIN_DOWNSAMPLING:
            problems.append(f"config key 'input_size' = {size} must be a multiple of {SWIN_DOWNSAMPLING}, at least "
                            f"{2 * SWIN_DOWNSAMPLING}, for 'student.type' swinunetr (SwinUNETR halves the resolution "
                            "5 times, and its instance norm needs a bottleneck of more than one pixel)")
        if swin["feature_size"] % 12:
            problems.append(f"config key 'student.swinunetr.feature_size' = {swin['feature_size']} must be a "
                            "multiple of 12 (MONAI SwinUNETR)")
        for stage, heads in enumerate(swin["num_heads"]):
            if (swin["feature_size"] * 2**stage) % heads:
                problems.append(f"config key 'student.swinunetr.num_heads' = {swin['num_heads']}: stage {stage} has "
                                f"{swin['feature_size'] * 2**stage} channels, not divisible by {heads} heads")
        return problems
    return _unet_size_problems("student.unet", student["unet"]["depth"], size)


def _unet_size_problems(key: str, depth: int, size: int) -> list[str]:
    """A UNet of ``depth`` levels (config section ``key``) halves the input depth - 1 times."""
    downsampling = 2 ** (depth - 1)
    return ([] if size % downsampling == 0 else
            [f"config key 'input_size' = {size} must be divisible by {downsampling}, the downsampling of '{key}'"])


def _teacher_problems(teacher: dict, size: int) -> list[str]:
    """The chosen scalar teacher type's constraints."""
    problems = []
    if teacher["type"] == "vit":
        vit = teacher["vit"]
        if size % vit["patch_size"]:
            problems.append(f"config key 'teacher.vit.patch_size' = {vit['patch_size']} must divide 'input_size' = {size}")
        if vit["hidden_size"] % vit["num_heads"]:
            problems.append(f"config key 'teacher.vit.hidden_size' = {vit['hidden_size']} must be divisible by "
                            f"'teacher.vit.num_heads' = {vit['num_heads']}")
        return problems
    if len(teacher["channels"]) != len(teacher["strides"]):
        problems.append("config keys 'teacher.channels' and 'teacher.strides' must have the same length")
    downsampling = math.prod(teacher["strides"])
    if size % downsampling:
        problems.append(
            f"config key 'input_size' = {size} must be divisible by the product of 'teacher.strides' = {downsampling}"
        )
    return problems


def _vit_problems(key: str, student: dict, size: int) -> list[str]:
    """A ViTAutoEnc's constraints, for the config section ``key``."""
    problems = []
    patch = student["patch_size"]
    if size % patch:
        problems.append(f"config key '{key}.patch_size' = {patch} must divide 'input_size' = {size}")
    if math.isqrt(patch) ** 2 != patch:
        problems.append(f"config key '{key}.patch_size' = {patch} must be a perfect square (MONAI ViT requirement)")
    if student["hidden_size"] % student["num_heads"]:
        problems.append(
            f"config key '{key}.hidden_size' = {student['hidden_size']} must be divisible by "
            f"'{key}.num_heads' = {student['num_heads']}"
        )
    return problems


def _condition_problems(config: dict) -> list[str]:
    """Names that the distillation conditions refer to must exist, and networks must fit the input size."""
    problems = []
    if "baseline" not in config["conditions"]:
        problems.append(f"config key 'conditions' = {config['conditions']} must include 'baseline' "
                        "(the reference of every paired comparison)")
    segmenters = config["segmenters"]
    size = config["input_size"]
    for name, arch in segmenters.items():
        depth = arch.get("depth")
        if arch["type"] == "basicunet" and depth not in (None, 5):
            problems.append(f"config key 'segmenters.{name}.depth' = {depth}: a basicunet always has 5 levels; leave depth out")
        problems += _unet_size_problems(f"segmenters.{name}", depth or 5, size)
    known = ["baseline", *segmenters]
    for member in config["ensemble_distillation"]["members"]:
        if member not in known:
            problems.append(f"config key 'ensemble_distillation.members' names {member!r}; allowed: {known} "
                            "('baseline' or a name from 'segmenters')")
    if config["pseudo_label"]["teacher"] not in [*known, "ensemble"]:
        problems.append(f"config key 'pseudo_label.teacher' = {config['pseudo_label']['teacher']!r} is not "
                        f"allowed; allowed values: {[*known, 'ensemble']}")
    feature = config["feature_distillation"]
    if feature["teacher"] not in known:
        problems.append(f"config key 'feature_distillation.teacher' = {feature['teacher']!r} is not allowed; "
                        f"allowed values: {known}")
    problems += _vit_problems("feature_distillation.student", feature["student"], size)
    small, big = feature["student"], config["student"]
    if ("feature_distillation" in config["conditions"] and feature["teacher"] == "baseline"
            and big["type"] == "vitautoenc") and not (small["num_layers"] < big["num_layers"]
                                                 or small["hidden_size"] < big["hidden_size"]):
        problems.append("config key 'feature_distillation.student' must have fewer layers (num_layers) or "
                        "channels (hidden_size) than its teacher, the baseline student ('student')")
    return problems


def load_config(*paths: str | Path) -> dict:
    """Load YAML files, later ones overriding earlier ones key by key (as Snakemake does)."""
    merged: dict[str, Any] = {}
    for path in paths:
        _deep_update(merged, _read_yaml(path) or {})
    return validate_config(merged)


def _deep_update(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
