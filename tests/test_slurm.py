"""The demo DAG through a real SLURM cluster with the repository's profile slurm/config.yaml.

Needs a running cluster (``sinfo`` answers) or the local single-node cluster scripts in
``../shared/slurm`` and root; otherwise the test is skipped with the reason. The profile is
the repository's, adjusted only for this CPU-only node without conda: no GPU requests, no
software deployment, fast status polling, partition ``debug``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml

from conftest import REPO, job_stats
from slurm_cluster import JOBNAME_PREFIX, run_command

pytestmark = pytest.mark.workflow

TRAINING_RULES = {"pretrain_teacher", "train_student_baseline", "joint_train", "expand_student"}
DISTILL_TRAINING_RULES = {"train_segmenter", "distill_ensemble", "train_pseudo_labelled", "train_mean_teacher",
                          "feature_distill"}
GPU_RULES = TRAINING_RULES | DISTILL_TRAINING_RULES | {"evaluate_networks", "evaluate_teachers",
                                                       "ensemble_soft_labels", "pseudo_label_shard"}
# Inference speed and memory (metrics) and epoch times (a column of the training histories) are
# measured, not computed: they differ between any two runs.
MEASURED = {"images_per_s", "peak_memory_mb"}
MEASURED_COLUMNS = {"seconds"}
# what the slice's inference job (segmenting the demo's new images) writes
PREDICTED = "results/predictions/new_images/expanded_anchored_0"


def sacct_jobs(run_name: str, since: datetime) -> list[dict]:
    """This run's jobs as SLURM accounting recorded them (the plugin names every job of a
    run after the run, and puts the rule into --comment, which sacct shows in SubmitLine)."""
    fields = ["JobIDRaw", "JobName", "State", "ExitCode", "SubmitLine"]
    # Accounting is written asynchronously; the plugin saw every job COMPLETED in sacct
    # already, so this is a formality, but allow a few seconds.
    for _ in range(10):
        result = run_command("sacct", "-X", "-n", "-P", f"--format={','.join(fields)}", "--name", run_name,
                             "-S", since.strftime("%Y-%m-%dT%H:%M:%S"))
        assert result.returncode == 0, result.stderr
        rows = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in result.stdout.splitlines() if line]
        if rows and all(row["State"] not in ("PENDING", "RUNNING", "COMPLETING") for row in rows):
            return rows
        time.sleep(1)
    return rows


def same_table(ours: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    """Equal tables: the same columns and rows, text equal, numbers within 1e-6 (NaN = NaN);
    rows of measured metrics (speed, memory) and measured columns (epoch times) left out."""
    if "metric" in ours.columns:
        ours, theirs = (t[~t["metric"].isin(MEASURED)].reset_index(drop=True) for t in (ours, theirs))
    ours, theirs = (t.drop(columns=[c for c in MEASURED_COLUMNS if c in t.columns]) for t in (ours, theirs))
    if list(ours.columns) != list(theirs.columns) or len(ours) != len(theirs):
        return False
    numeric = theirs.select_dtypes("number").columns
    text = [c for c in theirs.columns if c not in numeric]
    return ours[text].fillna("").equals(theirs[text].fillna("")) and \
        np.allclose(ours[numeric].to_numpy(float), theirs[numeric].to_numpy(float), rtol=0, atol=1e-6, equal_nan=True)


def assert_same_results(slurm_dir: Path, local_dir: Path) -> None:
    """Every table, checkpoint and image the SLURM run wrote equals the local run's file of that name."""
    tables = sorted(p.relative_to(slurm_dir) for p in (slurm_dir / "results").glob("**/*.csv")
                    if "benchmarks" not in p.parts and "logs" not in p.parts)
    assert {"results/splits/datasplit.csv", "results/history/teacher_pretrained_0.csv",
            "results/history/student_expanded_anchored_0.csv",
            f"{PREDICTED}/predictions.csv"} <= {str(p) for p in tables}, tables
    different = [str(p) for p in tables if not same_table(pd.read_csv(slurm_dir / p), pd.read_csv(local_dir / p))]
    assert not different, f"tables differ between the SLURM and the local run: {different}"
    models = sorted(p.name for p in (slurm_dir / "results" / "models").glob("*.pth"))
    assert models == ["student_expanded_anchored_0.pth", "student_joint_0.pth", "teacher_joint_0.pth",
                      "teacher_pretrained_0.pth"]
    for name in models:
        ours = torch.load(slurm_dir / "results" / "models" / name, map_location="cpu", weights_only=False)
        theirs = torch.load(local_dir / "results" / "models" / name, map_location="cpu", weights_only=False)
        assert {k: v for k, v in ours.items() if k != "state_dict"} == \
            {k: v for k, v in theirs.items() if k != "state_dict"}, name
        assert ours["state_dict"].keys() == theirs["state_dict"].keys(), name
        different = [k for k, v in ours["state_dict"].items() if not torch.equal(v, theirs["state_dict"][k])]
        assert not different, f"{name}: tensors differ between the SLURM and the local run: {different}"
    images = sorted(p.relative_to(slurm_dir) for p in (slurm_dir / PREDICTED).glob("*/*.tiff"))
    assert len(images) == 9, images  # probability, mask and instances of the three new images
    different = [str(p) for p in images
                 if not np.array_equal(tifffile.imread(slurm_dir / p), tifffile.imread(local_dir / p))]
    assert not different, f"images differ between the SLURM and the local run: {different}"


def resolved_resources(tmp_path: Path, overrides: dict) -> dict[str, dict[str, str]]:
    """Every rule's resources as Snakemake resolves them with the repository's profile and
    demo.yaml plus ``overrides`` (a dry run, no cluster needed)."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    profile.pop("software-deployment-method")  # a dry run with conda needs conda installed
    folder = tmp_path / "profile"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(overrides))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config.yaml"), str(REPO / "demo.yaml"), str(override),
         "--profile", str(folder), "-n"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resources = {}
    for rule, line in re.findall(r"^(?:local)?rule (\w+):\n(?:\s+.*\n)*?\s+resources: (.*)$",
                                 result.stdout + result.stderr, re.M):
        resources[rule] = dict(item.split("=", 1) for item in line.split(", "))
    assert GPU_RULES < set(resources) and len(resources) > len(GPU_RULES) + 5
    return resources


def test_profile_requests_gpus_per_process_for_training_and_one_for_inference(tmp_path):
    """With one GPU per process and 2 processes on one node (torchrun), training jobs ask for
    2 GPUs in one task, inference jobs for 1, every other rule for none; memory and time
    come from the config."""
    gpus = {kind: {"gpu": 1} for kind in ("train", "evaluate")}
    resources = resolved_resources(tmp_path, {"resources": gpus, "distributed": {"processes": 2}})
    demo = yaml.safe_load((REPO / "demo.yaml").read_text())["resources"]
    for rule, values in resources.items():
        expected = "2" if rule in TRAINING_RULES | DISTILL_TRAINING_RULES else "1" if rule in GPU_RULES else "0"
        assert values.get("gpu", "0") == expected, (rule, values)
        assert "gres" not in values and "mpi" not in values and "nodes" not in values, (rule, values)
    assert resources["joint_train"]["mem_mb"] == str(demo["train"]["mem_mb"])
    assert resources["evaluate_networks"]["runtime"] == str(demo["evaluate"]["runtime"])


@pytest.mark.slurm
def test_demo_dag_slice_runs_every_job_through_slurm(slurm_run):
    slurm_dir, output, since = slurm_run
    # Every job Snakemake ran went to SLURM (the targets are files: no rule 'all' to run locally).
    planned = job_stats(output)
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))
    assert finished == planned and "steps (100%) done" in output
    assert "all" not in finished
    assert {rule: finished[rule] for rule in TRAINING_RULES} == \
        {"pretrain_teacher": 1, "train_student_baseline": 0, "joint_train": 1, "expand_student": 1}
    run_name = re.search(r"SLURM run ID: (\S+)", output).group(1)
    assert run_name.startswith(JOBNAME_PREFIX + "_")
    submitted = {m.group(1): m.group(2) for m in re.finditer(
        r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", output)}
    assert Counter(submitted.values()) == finished

    jobs = sacct_jobs(run_name, since)
    assert {row["JobIDRaw"] for row in jobs} == set(submitted), jobs
    assert len(jobs) == sum(finished.values())
    assert all(row["State"] == "COMPLETED" and row["ExitCode"] == "0:0" for row in jobs), jobs
    for row in jobs:
        rule = submitted[row["JobIDRaw"]]
        if row["SubmitLine"]:  # Slurm >= 22.05 records the sbatch call
            assert re.search(rf"--comment '?rule_{rule}(_wildcards_|'|\s)", row["SubmitLine"]), row
            sbatch_options = row["SubmitLine"].split(" --wrap")[0]
            assert "--gpus" not in sbatch_options and "--gres" not in sbatch_options, row
    recorded = Counter(submitted[row["JobIDRaw"]] for row in jobs)
    assert recorded == finished
    assert recorded["predict_images"] == 1 and not {"evaluate_networks", "evaluate_teachers"} & set(recorded)
    assert {"generate_synthetic_data", "split_data", "store_manifest"} <= set(recorded)  # light jobs too


@pytest.mark.slurm
def test_demo_dag_through_slurm_matches_a_local_run(slurm_run, demo_run):
    """The shared demo run (the same config, run locally) wrote the same numbers and the same
    weights as the SLURM run."""
    assert_same_results(slurm_run[0], demo_run)
