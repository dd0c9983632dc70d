"""The demo DAG through a real SLURM cluster with the repository's profile slurm/config.yaml.

Needs a running cluster (``sinfo`` answers) or the local single-node cluster scripts in
``../shared/slurm`` and root; otherwise the test is skipped with the reason. The profile is
the repository's, adjusted only for this CPU-only node without conda: no GPU requests, no
software deployment, fast status polling, partition ``debug``.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, TINY_EXPANSION, job_stats, snakemake_command

pytestmark = pytest.mark.workflow

SLURM_SCRIPTS = REPO.parent / "shared" / "slurm"
TRAINING_RULES = {"pretrain_teacher", "train_student_baseline", "joint_train", "expand_student"}
DISTILL_TRAINING_RULES = {"train_segmenter", "distill_ensemble", "train_pseudo_labelled", "feature_distill"}
GPU_RULES = TRAINING_RULES | DISTILL_TRAINING_RULES | {"evaluate_networks", "evaluate_teachers",
                                                       "ensemble_soft_labels", "pseudo_label_shard"}
# Inference speed and memory are measured, not computed: they differ between any two runs.
MEASURED = {"images_per_s", "peak_memory_mb"}
# The tiny demo DAG with both seeds (32 SLURM jobs): ~3 min 15 s through SLURM alone on the
# 2-core machine; one seed saved almost nothing (jobs wait for status checks, not for CPUs).
RUN_CONFIG = TINY_EXPANSION
TIMEOUT_S = 900
JOBNAME_PREFIX = f"emkttest{os.getpid()}"


def _run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return _run("sinfo", "-h", timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM cluster with accounting: the running one, or the local one started (and
    stopped again) here."""
    started = False
    if not cluster_answers():
        start = SLURM_SCRIPTS / "start-local-slurm.sh"
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers (sinfo) and starting the local one needs root")
        if not start.is_file():
            pytest.skip(f"no SLURM cluster answers (sinfo) and {start} is missing")
        try:
            result = subprocess.run(["bash", str(start)], env={**os.environ, "SLURM_WITH_DBD": "1"},
                                    capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as error:
            pytest.skip(f"{start} did not finish in 900 s:\n{tail(str(error.stdout or ''))}")
        started = True  # stop what it may have started, also when it failed half-way
        if result.returncode != 0 or not cluster_answers():
            subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-local-slurm.sh")], capture_output=True, timeout=120)
            pytest.skip(f"{start} failed ({result.returncode}):\n{tail(result.stdout + result.stderr)}")
    try:
        accounting = _run("sacct", "-n", "-X", "-S", "now")
        if accounting.returncode != 0:
            pytest.skip(f"the SLURM cluster has no working accounting (sacct: {accounting.stderr.strip()}); "
                        "this test checks the jobs in sacct")
        yield
    finally:
        if started:
            subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-local-slurm.sh")], capture_output=True, timeout=120)


def partition() -> str:
    """'debug' (the local cluster's) where it exists, else the cluster's default partition."""
    names = _run("sinfo", "-h", "-o", "%P").stdout.split()
    if "debug" in names or "debug*" in names or not names:
        return "debug"
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


def user_account() -> str | None:
    """An account this user may submit to (the local cluster: 'root'), if accounting has any."""
    result = _run("sacctmgr", "-n", "-P", "show", "associations", f"user={getpass.getuser()}", "format=account")
    accounts = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return accounts[0] if result.returncode == 0 and accounts else None


def cluster_profile(tmp_path: Path) -> Path:
    """The repository's slurm/config.yaml, adjusted for a CPU-only node without conda."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "set-resources" not in profile  # GPU counts come from the config (the test config asks for none)
    profile.pop("software-deployment-method")
    profile["default-resources"]["slurm_partition"] = partition()
    account = user_account()
    if account:  # as a user would set it; the plugin checks it with sacctmgr
        profile["default-resources"]["slurm_account"] = account
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["seconds-between-status-checks"] = 2
    profile["slurm-jobname-prefix"] = JOBNAME_PREFIX  # to find (and cancel) this test's jobs
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def cancel_leftover_jobs() -> None:
    listed = _run("squeue", "-h", "-o", "%i %j").stdout.split("\n")
    ids = [line.split()[0] for line in listed if line.strip() and line.split()[1].startswith(JOBNAME_PREFIX + "_")]
    if ids:
        _run("scancel", *ids)


def start_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.Popen:
    """Start the repository's Snakefile in ``workdir``; stdout and stderr go to
    ``<workdir>.out`` (a file, so that two runs at once cannot block on a full pipe)."""
    command = snakemake_command(workdir, config, *args, cores=None)
    with open(f"{workdir}.out", "w") as log:
        return subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)


def finish(process: subprocess.Popen, workdir: Path, deadline: float) -> str:
    """Wait for a run until ``deadline`` (time.monotonic()); returns its output. A run that
    hangs is interrupted (Snakemake then cancels its SLURM jobs) and fails the test."""
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop(process)
        cancel_leftover_jobs()
        output = Path(f"{workdir}.out").read_text()
        raise AssertionError(f"snakemake in {workdir} did not finish in {TIMEOUT_S} s:\n{output[-6000:]}")
    output = Path(f"{workdir}.out").read_text()
    if process.returncode != 0:
        raise AssertionError(f"snakemake in {workdir} failed ({process.returncode}):\n{output[-8000:]}")
    return output


def stop(process: subprocess.Popen) -> None:
    """SIGINT first (Snakemake cancels its SLURM jobs), then kill the whole process group."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sacct_jobs(run_name: str, since: datetime) -> list[dict]:
    """This run's jobs as SLURM accounting recorded them (the plugin names every job of a
    run after the run, and puts the rule into --comment, which sacct shows in SubmitLine)."""
    fields = ["JobIDRaw", "JobName", "State", "ExitCode", "SubmitLine"]
    # Accounting is written asynchronously; the plugin saw every job COMPLETED in sacct
    # already, so this is a formality, but allow a few seconds.
    for _ in range(10):
        result = _run("sacct", "-X", "-n", "-P", f"--format={','.join(fields)}", "--name", run_name,
                      "-S", since.strftime("%Y-%m-%dT%H:%M:%S"))
        assert result.returncode == 0, result.stderr
        rows = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in result.stdout.splitlines() if line]
        if rows and all(row["State"] not in ("PENDING", "RUNNING", "COMPLETING") for row in rows):
            return rows
        time.sleep(1)
    return rows


def assert_same_results(slurm_dir: Path, local_dir: Path) -> None:
    summary_slurm, summary_local = (pd.read_csv(d / "results" / "tables" / "summary.csv") for d in (slurm_dir, local_dir))
    summary_slurm, summary_local = (s[~s["metric"].isin(MEASURED)].reset_index(drop=True)
                                    for s in (summary_slurm, summary_local))
    assert list(summary_slurm.columns) == list(summary_local.columns) and len(summary_slurm) == len(summary_local)
    numeric = summary_local.select_dtypes("number").columns
    text = [c for c in summary_local.columns if c not in numeric]
    assert summary_slurm[text].fillna("").equals(summary_local[text].fillna(""))
    assert np.allclose(summary_slurm[numeric].to_numpy(float), summary_local[numeric].to_numpy(float),
                       rtol=0, atol=1e-6, equal_nan=True)
    models = sorted(p.name for p in (local_dir / "results" / "models").glob("*.pth"))
    assert models == sorted(p.name for p in (slurm_dir / "results" / "models").glob("*.pth"))
    assert len(models) == 5 * len(RUN_CONFIG["seeds"])
    for name in models:
        ours = torch.load(slurm_dir / "results" / "models" / name, map_location="cpu", weights_only=False)
        theirs = torch.load(local_dir / "results" / "models" / name, map_location="cpu", weights_only=False)
        assert {k: v for k, v in ours.items() if k != "state_dict"} == \
            {k: v for k, v in theirs.items() if k != "state_dict"}, name
        assert ours["state_dict"].keys() == theirs["state_dict"].keys(), name
        different = [k for k, v in ours["state_dict"].items() if not torch.equal(v, theirs["state_dict"][k])]
        assert not different, f"{name}: tensors differ between the SLURM and the local run: {different}"


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
def test_demo_dag_through_slurm_matches_a_local_run(slurm_cluster, tmp_path):
    profile = cluster_profile(tmp_path)
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    since = datetime.now() - timedelta(seconds=5)
    deadline = time.monotonic() + TIMEOUT_S

    # The same config locally (the reference), at the same time: the SLURM run spends much
    # of its time waiting for the next status check, and the results do not depend on load.
    local = start_snakemake(local_dir, RUN_CONFIG, "--cores", "2", "results/tables/summary.csv")
    try:
        output = finish(start_snakemake(slurm_dir, RUN_CONFIG, "--profile", str(profile)), slurm_dir, deadline)
        finish(local, local_dir, deadline)
    finally:
        stop(local)

    # Every job Snakemake ran went to SLURM, except rule 'all' (no command, nothing to run).
    seeds = len(RUN_CONFIG["seeds"])
    planned = job_stats(output)
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))
    assert finished == planned and "steps (100%) done" in output
    assert finished.pop("all") == 1 and all(finished[rule] == seeds for rule in TRAINING_RULES)
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
    assert all(recorded[rule] == seeds for rule in TRAINING_RULES)
    assert recorded["evaluate_networks"] == recorded["evaluate_teachers"] == seeds

    # The local run gives the same numbers and the same weights.
    assert_same_results(slurm_dir, local_dir)
