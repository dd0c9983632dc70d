"""Real Snakemake runs of the whole DAG in temporary folders, with tiny settings."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY, merged

pytestmark = pytest.mark.workflow

FIGURES = ["metrics.png", "teacher_scatter.png", "training_curves.png", "predictions.png"]
TRAINING_RULES = {"pretrain_teacher", "train_student_baseline", "joint_train", "expand_student"}


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` with config.yaml overridden by ``config``."""
    override = workdir / "test_config.yaml"
    override.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(REPO / "config.yaml"), str(override), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(output: str) -> Counter:
    """Rule counts from the 'Job stats' table of a dry run."""
    counts: Counter = Counter()
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo_dag")
    snakemake(workdir, TINY)
    return workdir


def test_lint_is_clean():
    for extra in ([], ["--configfile", str(REPO / "demo.yaml")]):
        result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", *extra], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_paper_config_plans_every_stage_per_seed(tmp_path):
    """The paper's DAG (5 seeds, folder data) resolves without data present."""
    result = snakemake(tmp_path, {}, "-n")
    jobs = planned_jobs(result.stdout + result.stderr)
    assert jobs["pretrain_teacher"] == jobs["train_student_baseline"] == jobs["joint_train"] == jobs["expand_student"] == 5
    assert jobs["evaluate_student"] == 15 and jobs["evaluate_teacher"] == 10
    assert "generate_synthetic_data" not in jobs


def test_bad_config_fails_with_the_key_named(tmp_path):
    result = snakemake(tmp_path, {"split": {"train": 0.9}}, "-n", check=False)
    assert result.returncode != 0
    assert "'split.train' + 'split.val' + 'split.test' must sum to 1" in result.stdout + result.stderr


def test_demo_dag_produces_table_and_figures(demo_run):
    results = demo_run / "results"
    split = pd.read_csv(results / "splits" / "datasplit.csv")
    assert {"path", "source", "split"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val", "test"}
    summary = pd.read_csv(results / "tables" / "summary.csv")
    students = summary[summary["model"] == "student"]
    assert set(students["condition"]) == {"baseline", "joint", "expanded"}
    assert set(students["metric"]) == {"iou", "dice", "accuracy", "precision", "recall", "ece", "mce"}
    assert (students["n_seeds"] == 2).all() and {"seed_0", "seed_1"} <= set(summary.columns)
    teachers = summary[summary["model"] == "teacher"]
    assert set(teachers["condition"]) == {"pretrained", "joint"} and {"mae", "spearman"} <= set(teachers["metric"])
    iou = students[students["metric"] == "iou"]
    assert iou["mean"].between(0, 1).all()
    assert "| student | baseline | iou |" in (results / "tables" / "summary.md").read_text()
    for figure in FIGURES:
        assert (results / "figures" / figure).stat().st_size > 10_000
    for stage in ("teacher_pretrained", "student_baseline", "joint", "student_expanded"):
        history = pd.read_csv(results / "history" / f"{stage}_0.csv")
        assert {"epoch", "lr", "seconds"} <= set(history.columns) and len(history) == 2
    assert (results / "benchmarks" / "joint_train" / "1.tsv").is_file()
    assert "epoch 2/2" in (results / "logs" / "expand_student" / "0.log").read_text()


def test_touching_a_checkpoint_reruns_only_its_evaluation_and_the_summary(demo_run):
    models = demo_run / "results" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    (models / "student_expanded_1.pth").touch()
    dry = snakemake(demo_run, TINY, "-n")
    jobs = planned_jobs(dry.stdout + dry.stderr)
    assert not TRAINING_RULES & set(jobs)
    assert jobs == Counter({"evaluate_student": 1, "evaluate_teacher": 2, "aggregate": 1, "plot_metrics": 1,
                            "plot_teacher_scatter": 1, "all": 1})
    snakemake(demo_run, TINY)
    after = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    assert {k: v for k, v in after.items() if k != "student_expanded_1.pth"} == \
        {k: v for k, v in before.items() if k != "student_expanded_1.pth"}
    again = snakemake(demo_run, TINY, "-n")
    assert "nothing to be done" in (again.stdout + again.stderr).lower()


def test_real_em_fixture_runs_through_the_whole_dag(tmp_path, shared_data):
    config = merged(TINY, {
        "seeds": [0],
        "data": {"source": "folder", "labelled_dir": str(shared_data / "cem_mitolab"),
                 "unlabelled_dir": str(shared_data / "unlabelled")},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0},
        "input_size": 64,
        "student": {"patch_size": 16},
        "train": {"pos_weight": 5.0},
        "teacher_pretrain": {"epochs": 1},
        "student_baseline": {"epochs": 1},
        "joint": {"epochs": 1},
        "expand": {"epochs": 1, "images_per_epoch": 8},
    })
    snakemake(tmp_path, config)
    results = tmp_path / "results"
    split = pd.read_csv(results / "splits" / "datasplit.csv")
    assert len(split) == 26 and split["path"].str.contains("em-mito-mini").all()
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert set(summary[summary["model"] == "student"]["condition"]) == {"baseline", "joint", "expanded"}
    assert len(pd.read_csv(results / "data" / "unlabelled.csv")) == 30
    per_image = pd.read_csv(results / "eval" / "student_baseline_0_per_image.csv")
    assert len(per_image) == (split["split"] == "test").sum()
    for figure in FIGURES:
        assert (results / "figures" / figure).is_file()
