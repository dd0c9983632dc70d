"""Real Snakemake runs of the whole DAG in temporary folders, with tiny settings."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import tifffile
import torch
import yaml

from conftest import (DEMO, FIXTURE_RUN, NEW_IMAGES, REAL_EM_CUT, REAL_EM_POOL_ZIP, REPO, TINY, job_stats, merged, snakemake,
                      snakemake_command, zip_tree)
from docs_text import NOT_DEMO_PATHS, demo_result_paths
from emkt.checkpoints import load_checkpoint
from emkt.config import load_config, validate_config
from emkt.models import student_arch, teacher_arch
from emkt.resume import HOLD_ENV
from loopback import LoopbackServer

pytestmark = pytest.mark.workflow

FIGURES = ["metrics.png", "speed_accuracy.png", "teacher_scatter.png", "training_curves.png", "predictions.png"]
STUDENTS = {"baseline", "joint", "expanded_anchored", "ensemble_distilled", "pseudo_labelled", "mean_teacher",
            "feature_distilled"}
TEACHER_STAGES = {"pretrained", "joint"}  # the real-EM fixture run has the error-map teacher's
PIXEL_METRICS = {"iou", "dice", "accuracy", "precision", "recall", "ece", "mce"}
OBJECT_METRICS = {"object_f1", "pq", "count_mae"}
COST_METRICS = {"parameters", "images_per_s", "peak_memory_mb"}
# under the calibration chosen on validation (threshold, temperature), and threshold-free (ap)
CALIBRATED_METRICS = {"iou_tuned", "ap", "ece_calibrated", "threshold", "temperature"}
FINE_TUNED = {"expanded_anchored", "pseudo_labelled", "mean_teacher"}
TRAINING_RULES = {"pretrain_teacher", "train_student_baseline", "joint_train", "expand_student"}


def evaluated_networks(dry_run: str) -> set[str]:
    """The networks whose test metrics a dry run's evaluation jobs write (role_condition)."""
    return set(re.findall(r"results/eval/((?:student|reference)_\w+?)_\d+\.csv", dry_run))


def test_lint_is_clean():
    for extra in ([], ["--configfile", str(REPO / "demo.yaml")]):
        result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", *extra], cwd=REPO,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_paper_config_plans_every_stage_per_seed(tmp_path):
    """The paper's DAG (5 seeds, EMPIAR data) resolves before anything is downloaded."""
    result = snakemake(tmp_path, {}, "-n")
    jobs = job_stats(result.stdout + result.stderr)
    # The default expansion variant, anchored, needs one teacher kind (the Critic): one
    # pretrained and one joint-trained teacher (with its joint student) per seed.
    assert jobs["train_student_baseline"] == jobs["expand_student"] == 5
    assert jobs["pretrain_teacher"] == jobs["joint_train"] == 5
    # One evaluation job per seed for its 7 students and 3 references (unet, basicunet, their
    # ensemble with the baseline), one for its 2 teachers.
    assert jobs["evaluate_networks"] == jobs["evaluate_teachers"] == 5
    assert len(evaluated_networks(result.stdout)) == 10 and jobs["train_mean_teacher"] == 5
    assert jobs["train_segmenter"] == 10 and jobs["ensemble_soft_labels"] == jobs["distill_ensemble"] == 5
    assert jobs["pseudo_label_shard"] == 64 * 5 and jobs["train_pseudo_labelled"] == jobs["feature_distill"] == 5
    assert jobs["download_archive"] == jobs["extract_archive"] == 2 and jobs["index_data"] == 1
    assert jobs["split_data"] == jobs["screen_pool"] == 1
    assert jobs["pack_labelled_shard"] == 8 and jobs["pack_pool_shard"] == 64 and jobs["store_manifest"] == 2
    assert "generate_synthetic_data" not in jobs
    folder = snakemake(tmp_path, {"data": {"source": "folder", "labelled_dir": "lab", "unlabelled_dir": "pool"}}, "-n")
    jobs = job_stats(folder.stdout + folder.stderr)
    assert "download_archive" not in jobs and jobs["index_data"] == 1 and jobs["pack_pool_shard"] == 64


def test_authors_final_preset_plans_their_run(tmp_path):
    """studies/authors-final.yaml on config.yaml: SwinUNETR students, ViT teachers, their five
    seeds, the single-teacher and the 5-teacher committee expansion, nothing else."""
    preset = yaml.safe_load((REPO / "studies" / "authors-final.yaml").read_text())
    config = validate_config(merged(load_config(REPO / "config.yaml"), preset))
    assert student_arch(config["student"])["type"] == "swinunetr" and teacher_arch(config, "critic")["type"] == "vit"
    dry = snakemake(tmp_path, preset, "-n").stdout
    jobs = job_stats(dry)
    assert jobs["pretrain_teacher"] == jobs["joint_train"] == jobs["train_student_baseline"] == 5
    assert jobs["expand_student"] == 10  # faithful and committee, per seed
    assert evaluated_networks(dry) == {"student_baseline", "student_joint", "student_expanded_faithful",
                                       "student_expanded_committee"}
    assert not {"train_segmenter", "train_mean_teacher", "pseudo_label_shard"} & set(jobs)
    assert "results/models/teacher_joint_1337.pth" in dry


def test_a_condition_not_listed_adds_no_jobs(tmp_path):
    dry = snakemake(tmp_path, {"conditions": ["baseline"]}, "-n").stdout
    only_baseline = job_stats(dry)
    assert only_baseline["evaluate_networks"] == 5 and only_baseline["train_student_baseline"] == 5
    assert evaluated_networks(dry) == {"student_baseline"}
    assert not {"pretrain_teacher", "train_segmenter", "pseudo_label_shard", "feature_distill",
                "evaluate_teachers", "plot_teacher_scatter"} & set(only_baseline)
    # Self-training from the unet alone: one segmenter per seed, no ensemble.
    dry = snakemake(tmp_path, {"conditions": ["baseline", "pseudo_label"], "seeds": [0]}, "-n").stdout
    pseudo = job_stats(dry)
    assert pseudo["train_segmenter"] == 1 and pseudo["pseudo_label_shard"] == 64
    assert evaluated_networks(dry) == {"student_baseline", "student_pseudo_labelled", "reference_unet"}
    assert pseudo["evaluate_networks"] == 1 and "ensemble_soft_labels" not in pseudo
    # ... or from the ensemble: its members are trained and it is evaluated as a reference.
    ensemble = job_stats(snakemake(tmp_path, {"conditions": ["baseline", "pseudo_label"], "seeds": [0],
                                              "pseudo_label": {"teacher": "ensemble"}}, "-n").stdout)
    assert ensemble["train_segmenter"] == 2 and ensemble["ensemble_soft_labels"] == 1
    assert "distill_ensemble" not in ensemble


def test_bad_config_fails_with_the_key_named(tmp_path):
    result = snakemake(tmp_path, {"split": {"train": 0.9}}, "-n", check=False)
    assert result.returncode != 0
    assert "'split.train' + 'split.val' + 'split.test' must sum to 1" in result.stdout + result.stderr


def test_demo_dag_produces_table_and_figures(demo_run):
    results = demo_run / "results"
    split = pd.read_csv(results / "splits" / "datasplit.csv")
    assert {"id", "path", "mask", "source", "split"} <= set(split.columns)
    assert set(split["split"]) == {"train", "val", "test"}
    index = pd.read_csv(results / "data" / "index.csv")
    assert index["set"].value_counts().to_dict() == {"unlabelled": 24, "labelled": 16}
    assert pd.read_csv(results / "data" / "excluded.csv").empty
    assert {p.name for p in (results / "store" / "labelled").iterdir()} == {
        "shard-00000.bin", "shard-00000.csv", "shard-00001.bin", "shard-00001.csv"}
    assert {p.name for p in (results / "store" / "pool").iterdir()} == {"shard-00000.npy", "shard-00000.origin.npy"}
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert set(summary["dataset"]) == {"test", "em_mito_mini"}
    external, summary = summary[summary["dataset"] == "em_mito_mini"], summary[summary["dataset"] == "test"]
    students = summary[summary["model"] == "student"]
    assert set(students["condition"]) == STUDENTS
    assert set(students["metric"]) == (PIXEL_METRICS | OBJECT_METRICS | COST_METRICS | CALIBRATED_METRICS
                                       | {"iou_vs_teacher", "count_diff_vs_teacher", "kept_start"})
    assert set(students[students["metric"] == "iou_vs_teacher"]["condition"]) == {"feature_distilled"}
    assert set(students[students["metric"] == "kept_start"]["condition"]) == FINE_TUNED
    assert students[students["metric"].isin(CALIBRATED_METRICS)]["mean"].notna().all()
    assert students[students["metric"].isin(["threshold", "temperature", "kept_start"])]["delta_mean"].isna().all()
    assert (students["n_seeds"] == 2).all() and {"seed_0", "seed_1"} <= set(summary.columns)
    assert students[students["metric"].isin(OBJECT_METRICS)]["mean"].notna().all()
    references = summary[summary["model"] == "reference"]
    assert set(references["condition"]) == {"unet", "basicunet", "ensemble"}
    assert set(references["metric"]) == PIXEL_METRICS | OBJECT_METRICS | COST_METRICS | CALIBRATED_METRICS
    # Every network of every seed on the external set, compared with the baseline on it.
    assert set(zip(external["model"], external["condition"])) == \
        {("student", c) for c in STUDENTS} | {("reference", c) for c in ("unet", "basicunet", "ensemble")}
    assert set(external["metric"]) == PIXEL_METRICS | OBJECT_METRICS | CALIBRATED_METRICS
    assert (external["n_seeds"] == 2).all()
    # settings (the threshold and temperature each network was calibrated with) get no Δ
    assert external[(external["condition"] != "baseline")
                    & ~external["metric"].isin(["threshold", "temperature"])]["n_pairs"].eq(2).all()
    assert external[external["metric"].isin(["iou", "object_f1", "pq"])]["mean"].between(0, 1).all()
    per_image = pd.read_csv(results / "eval" / "external" / "em_mito_mini" / "student_expanded_anchored_1_per_image.csv")
    assert len(per_image) == 5 and {"iou", "object_f1", "objects_true", "objects_predicted"} <= set(per_image.columns)
    # The small student is smaller than its teacher (the baseline), and both were timed.
    cost = summary[summary["metric"].isin(COST_METRICS)].set_index(["condition", "metric"])["mean"]
    assert cost["feature_distilled", "parameters"] < cost["baseline", "parameters"]
    assert (cost > 0).all()
    # Paired comparison with the baseline student, for students and references.
    compared = summary[(summary["model"] != "teacher") & (summary["condition"] != "baseline")
                       & summary["metric"].isin(PIXEL_METRICS)]
    assert (compared["n_pairs"] == 2).all() and compared["delta_ci_low"].notna().all()
    assert summary[summary["condition"] == "baseline"]["delta_mean"].isna().all()
    teachers = summary[summary["model"] == "teacher"]
    assert set(teachers["condition"]) == TEACHER_STAGES and {"mae", "spearman"} <= set(teachers["metric"])
    # The variants against the joint student they start from, paired over the seeds.
    expansion = pd.read_csv(results / "tables" / "expansion.csv")
    assert set(expansion["condition"]) == {"joint", "expanded_anchored"}
    assert set(expansion["metric"]) == {"iou", "dice", "object_f1"} and set(expansion["dataset"]) == {"test", "em_mito_mini"}
    compared = expansion[expansion["condition"] != "joint"]
    assert compared["n_pairs"].eq(2).all() and compared["delta_ci_low"].notna().all()
    assert "Δ vs joint" in (results / "tables" / "expansion.md").read_text()
    iou = students[students["metric"] == "iou"]
    assert iou["mean"].between(0, 1).all()
    markdown = (results / "tables" / "summary.md").read_text()
    assert "| student | baseline | iou |" in markdown and "| reference | ensemble | iou |" in markdown
    assert markdown.index("### Test split") < markdown.index("### External set: em_mito_mini")
    assert (results / "figures" / "datasets.png").stat().st_size > 10_000
    assert "p (paired t)" in markdown
    # the few test-split numbers `make demo` prints: students, then references, no teachers
    headline = (results / "tables" / "headline.md").read_text()
    assert headline.startswith("Test split, 2 seeds, ") and len(headline.splitlines()) <= 20
    assert headline.index("| student   | baseline ") < headline.index("| reference | ensemble ")
    kinds = {line.split("|")[1].strip() for line in headline.splitlines() if line.startswith("| ")}
    assert kinds == {"kind", "student", "reference"} and "182001.000" not in headline
    assert "| student   | mean_teacher " in headline
    # the report and the selection (validation split) tables are apart and say which they are
    assert markdown.startswith("Report (test split and external sets): ")
    assert (results / "tables" / "selection.md").read_text().startswith("Selection (validation split): ")
    assert "val" not in set(expansion["dataset"]) and (results / "tables" / "expansion_selection.csv").is_file()
    assert {"boot_ci_low", "boot_ci_high", "n_images", "kept_start"} <= set(summary.columns)
    # the interval over test images, beside the one over seeds, for the pooled pixel scores
    compared_iou = summary[(summary["metric"] == "iou") & (summary["condition"] != "baseline")
                           & (summary["model"] != "teacher")]
    assert compared_iou["boot_ci_low"].notna().all() and (compared_iou["boot_ci_low"] <= compared_iou["boot_ci_high"]).all()
    # validation scores: what defaults are chosen on, apart from the report
    selection = pd.read_csv(results / "tables" / "selection.csv")
    assert set(selection["dataset"]) == {"val"}
    assert {"iou", "iou_tuned", "ap", "ece", "ece_calibrated"} <= set(selection["metric"])
    assert set(selection[selection["model"] == "student"]["condition"]) == STUDENTS
    assert (results / "data" / "pool_excluded.csv").is_file()
    for figure in FIGURES:
        assert (results / "figures" / figure).stat().st_size > 10_000
    for stage in ("teacher_pretrained", "student_baseline", "joint", "student_expanded_anchored", "segmenter_unet",
                  "segmenter_basicunet", "student_ensemble_distilled", "student_pseudo_labelled",
                  "student_mean_teacher", "student_feature_distilled"):
        history = pd.read_csv(results / "history" / f"{stage}_0.csv")
        # expansion, and self-training and the mean teacher from the baseline (their init), validate their
        # start first (epoch 0)
        fine_tuned = stage.startswith("student_expanded") or stage in ("student_pseudo_labelled", "student_mean_teacher")
        epochs = [0, 1, 2] if fine_tuned else [1, 2]
        assert {"epoch", "lr", "seconds"} <= set(history.columns) and list(history["epoch"]) == epochs, stage
        if fine_tuned:  # the checkpoint says which epoch was kept, and what it was fine-tuned from
            extra = load_checkpoint(results / "models" / f"{stage}_0.pth")["extra"]
            start = "joint" if stage.startswith("student_expanded") else "baseline"
            assert extra["fine_tuned_from"] == start and extra["kept_epoch"] == history["val_iou"].idxmax(), stage
    # Self-training and the mean teacher see as many pool images as expansion.
    pool_images = [pd.read_csv(results / "history" / f"{stage}_0.csv")["train_pool_images"].dropna().tolist()
                   for stage in ("student_expanded_anchored", "student_pseudo_labelled", "student_mean_teacher")]
    assert pool_images[0] == pool_images[1] == pool_images[2]  # epoch 0 trains on nothing
    soft = pd.read_csv(results / "soft_labels" / "ensemble_0.csv")
    assert len(soft) == (split["split"] == "train").sum()
    # Pseudo-label shards are temporary by default (as large as the pool): gone once used.
    assert (results / "pseudo" / "0.json").is_file() and not list((results / "pseudo" / "0").glob("*.npy"))
    assert (results / "benchmarks" / "joint_train" / "joint_1.tsv").is_file()
    assert "epoch 2/2" in (results / "logs" / "expand_student" / "anchored_0.log").read_text()


def test_demo_run_segments_the_new_images_folder(demo_run):
    out = demo_run / "results" / "predictions" / "new_images" / "expanded_anchored_0"
    table = pd.read_csv(out / "predictions.csv")
    assert (table["status"] == "ok").all() and len(table) == len(NEW_IMAGES)
    for name, shape in NEW_IMAGES.items():
        stem = Path(name).stem
        prob = tifffile.imread(out / "probability" / f"{stem}.tiff")
        mask = tifffile.imread(out / "mask" / f"{stem}.tiff")
        instances = tifffile.imread(out / "instances" / f"{stem}.tiff")
        assert prob.shape == mask.shape == instances.shape == shape
        assert prob.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}  # probability: uint8 in the config
        assert not (instances[mask == 0] > 0).any()
    assert "images/s" in (demo_run / "results" / "logs" / "predict_images" / "new_images" / "expanded_anchored_0.log").read_text()


def test_touching_a_checkpoint_reruns_only_its_evaluations_and_the_summary(touched_demo_run):
    # the example in docs/pipeline.md ("Regenerating results"), as it is written there: the
    # file it touches and the evaluation jobs it lists (one each: the seed's networks, teachers),
    # on a copy of the finished demo run (conftest.TouchedDemoRun)
    run = touched_demo_run
    jobs = job_stats(run.dry_run)
    assert not TRAINING_RULES & set(jobs)
    # the demo run also has an external set: the seed's evaluation on it too
    assert {rule: jobs[rule] for rule in [*run.rules, "evaluate_external", "aggregate"]} == \
        {**{rule: 1 for rule in run.rules}, "evaluate_external": 1, "aggregate": 1}
    # ... and its prediction folder, which it segments with this very network
    assert run.touched == "results/models/student_expanded_anchored_0.pth"
    assert DEMO["predict"][0]["networks"] == ["expanded_anchored"]
    assert {rule for rule in jobs if not rule.startswith(("evaluate_", "plot_"))} == {"aggregate", "all", "predict_images"}
    output = run.rerun.wait()
    assert job_stats(output) == jobs  # what ran is what the dry run listed
    after = {p.name: p.stat().st_mtime_ns for p in (run.workdir / "results" / "models").iterdir()}
    name = Path(run.touched).name
    assert {k: v for k, v in after.items() if k != name} == {k: v for k, v in run.models_before.items() if k != name}
    again = snakemake(run.workdir, DEMO, "-n")
    assert "nothing to be done" in (again.stdout + again.stderr).lower()


def test_every_results_path_the_docs_show_is_written_by_the_demo(demo_run):
    # README.md and docs/*.md, not docs/results/ (studies in their own folders) nor the
    # generated configuration reference (tests/docs_text.py: demo_docs)
    shown = demo_result_paths()
    assert "results/models/student_expanded_anchored_0.pth" in shown and "results/tables/selection.md" in shown
    missing = {path: pages for path, pages in sorted(shown.items())
               if path not in NOT_DEMO_PATHS and not (demo_run / path).exists()}
    assert not missing, f"the docs show paths the demo does not write (path: pages): {missing}"




def test_html_report_holds_the_figures_table_and_captions(demo_run):
    snakemake(demo_run, DEMO, "--report", "report.html")
    html = (demo_run / "report.html").read_text()
    assert len(html) > 100_000  # figures are embedded: the report is self-contained
    for name in ["summary.csv", "excluded.csv", "datasets.png", *FIGURES]:
        assert name in html, name
    for caption in (REPO / "workflow" / "report").glob("*.rst"):
        # the caption's opening plain words (markup renders differently)
        words = [w for w in caption.read_text().split()[:3] if w.isalpha()]
        assert " ".join(words) in html, caption.name


def test_packing_interrupted_after_one_shard_repacks_only_the_missing_one(demo_run):
    """Packing is resumable: as if the run died while packing labelled shard 1 (its output and
    the manifest missing), a rerun packs that shard alone and keeps shard 0."""
    store = demo_run / "results" / "store"
    lost = [store / "labelled" / "shard-00001.bin", store / "labelled" / "shard-00001.csv", store / "labelled.json"]
    saved = {path: (path.read_bytes(), path.stat().st_atime_ns, path.stat().st_mtime_ns) for path in lost}
    for path in lost:
        path.unlink()
    try:
        dry = snakemake(demo_run, DEMO, "-n", "results/store/labelled.json")
        jobs = job_stats(dry.stdout + dry.stderr)
        assert jobs["pack_labelled_shard"] == 1 and jobs["store_manifest"] == 1
        assert not {"pack_pool_shard", "index_data", "split_data", "joint_train"} & set(jobs)
    finally:
        for path, (data, atime, mtime) in saved.items():
            path.write_bytes(data)
            os.utime(path, ns=(atime, mtime))


def test_real_em_fixture_from_a_loopback_empiar_mirror_runs_to_the_summary_table(real_em_run):
    """download (cut mid-way, resumed) -> extract -> index -> pack -> grouped split -> training from the
    store -> evaluation -> summary table (the figures are the demo run's to check)."""
    # conftest.RealEmRun: started with the session, the pool archive's first transfer cut
    workdir, empiar_mirror = real_em_run
    pool_zip = REAL_EM_POOL_ZIP
    assert [r for r in empiar_mirror.requests if r[0] == pool_zip] == [(pool_zip, None), (pool_zip, f"bytes={REAL_EM_CUT}-")]
    for name in ("cem_mitolab", "cem1.5m"):
        assert (workdir / "data" / "downloads" / f"{name}.zip").read_bytes() == \
            (empiar_mirror.root / ("11037" if name == "cem_mitolab" else "11035") / "data" / f"{name}.zip").read_bytes()
    assert not list((workdir / "data" / "downloads").glob("*.part"))
    results = workdir / "results"
    index = pd.read_csv(results / "data" / "index.csv")
    assert index["set"].value_counts().to_dict() == {"unlabelled": 30, "labelled": 26}
    assert index["path"].str.startswith("data/").all()
    split = pd.read_csv(results / "splits" / "datasplit.csv")
    assert len(split) == 26 and split.groupby("source")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    manifest = yaml.safe_load((results / "store" / "pool.json").read_text())
    assert manifest["images"] == 10 + 20 * 25 and len(manifest["shards"]) == 3
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert set(summary[summary["model"] == "student"]["condition"]) == \
        {"baseline", "joint", "joint_error_map", "expanded_error_map"}
    teachers = summary[summary["model"] == "teacher"]
    assert set(teachers["condition"]) == {"pretrained", "joint", "pretrained_error_map", "joint_error_map"}
    # the error-map teachers also say where the errors are: per-pixel AUROC, per student too
    auroc = teachers[teachers["metric"].str.startswith("pixel_auroc")]
    assert set(auroc["condition"]) == {"pretrained_error_map", "joint_error_map"}
    assert "pixel_auroc@expanded_error_map" in set(auroc["metric"]) and auroc["mean"].between(0, 1).all()
    per_image = pd.read_csv(results / "eval" / "student_baseline_0_per_image.csv")
    assert len(per_image) == (split["split"] == "test").sum()
    # the run's networks: UNet students and a ViT scalar teacher, recorded in their checkpoints
    for student in ("baseline", "joint", "expanded_error_map"):
        assert load_checkpoint(results / "models" / f"student_{student}_0.pth")["arch"]["type"] == "unet"
    assert load_checkpoint(results / "models" / "teacher_joint_0.pth")["arch"]["type"] == "vit"
    assert teachers[teachers["condition"] == "joint"]["mean"].notna().any()
    assert "epoch 1/1" in (results / "logs" / "expand_student" / "error_map_0.log").read_text()


def test_too_many_bad_files_stop_the_index_and_keep_the_downloads(tmp_path, shared_data):
    labelled = tmp_path / "cem_mitolab"
    shutil.copytree(shared_data / "cem_mitolab", labelled)
    (labelled / "cem_examples" / "images" / "broken.tiff").write_bytes(b"this is not a TIFF")
    shutil.copy(labelled / "cem_examples" / "masks" / "mitochondria1.tiff", labelled / "cem_examples" / "masks" / "broken.tiff")
    root = tmp_path / "mirror"
    zip_tree(labelled, root / "11037" / "data" / "cem_mitolab.zip", "cem_mitolab")
    zip_tree(shared_data / "unlabelled", root / "11035" / "data" / "cem1.5m.zip", "cem1.5m")
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = "results/splits/datasplit.csv"
    with LoopbackServer(root) as server:
        config = merged(FIXTURE_RUN, {"data": {"empiar": {"url_base": server.url}, "max_excluded_fraction": 0.01}})
        failed = snakemake(workdir, config, target, check=False)
        assert failed.returncode != 0
        log = (workdir / "results" / "logs" / "index_data.log").read_text()
        assert "data.max_excluded_fraction" in log and "labelled: 1 of 27 files (3.7%)" in log
        assert "broken.tiff: unreadable" in log
        assert not (workdir / "results" / "data" / "index.csv").exists()
        report = pd.read_csv(workdir / "results" / "logs" / "index_data.excluded.csv")
        assert report["path"].str.endswith("broken.tiff").tolist() == [True]
        archives = {p: p.stat().st_mtime_ns for p in (workdir / "data" / "downloads").glob("*.zip")}
        assert len(archives) == 2
        requests = len(server.requests)
        # Allowing 5% lets the run go on; nothing is downloaded or extracted again.
        snakemake(workdir, merged(config, {"data": {"max_excluded_fraction": 0.05}}), target)
        assert len(server.requests) == requests
    assert {p: p.stat().st_mtime_ns for p in archives} == archives
    excluded = pd.read_csv(workdir / "results" / "data" / "excluded.csv")
    assert excluded[["reason"]].to_dict("list") == {"reason": ["unreadable"]}
    assert "1 file(s) excluded" in (workdir / "results" / "logs" / "index_data.log").read_text()
    assert len(pd.read_csv(workdir / target)) == 26


def job_processes(launched: subprocess.Popen, script: str) -> list[psutil.Process]:
    """The processes ``launched`` started (in its session, which start_new_session made its
    own, or below it) that run the Snakemake-generated copy of ``script``; never anyone
    else's, whatever their command line says."""
    below = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        below = {child.pid for child in psutil.Process(launched.pid).children(recursive=True)}
    found = []
    for process in psutil.process_iter():
        try:
            ours = process.pid in below or os.getsid(process.pid) == launched.pid
            command = process.cmdline() if ours else []
        except (psutil.Error, OSError):  # ended meanwhile, or not ours to read
            continue
        if any(script in part for part in command) and "snakemake" not in command[0:3]:
            found.append(process)
    return found


HOLD_EPOCH = 2


def run_and_kill(workdir: Path, config: dict, target: str, kill) -> tuple[subprocess.Popen, str]:
    """Start Snakemake on ``target`` with the baseline's training told to hold once it has saved
    epoch HOLD_EPOCH (emkt.resume.HOLD_ENV: it writes <state>.held and waits); then call
    ``kill(process)``; return the process and its output after it ends. The job waits for the
    kill, so the kill lands after that epoch however busy the machine is."""
    env = {**os.environ, HOLD_ENV: str(HOLD_EPOCH)}
    process = subprocess.Popen(snakemake_command(workdir, config, target), cwd=workdir, text=True, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    held = workdir / "results" / "state" / "train_student_baseline" / "0.pt.held"
    while not held.exists() and process.poll() is None:
        time.sleep(0.05)
    killed = held.exists() and kill(process)
    output = process.communicate(timeout=600)[0]
    assert killed, "the training job ended before holding after epoch 2:\n" + output[-3000:]
    return process, output


def kill_training_job(process: subprocess.Popen) -> bool:
    """SIGKILL the training job only (as SLURM does at a timeout or preemption)."""
    jobs = job_processes(process, "train_student_baseline.py")
    for job in jobs:
        job.send_signal(signal.SIGKILL)
    return bool(jobs)


def kill_everything(process: subprocess.Popen) -> bool:
    """SIGKILL Snakemake and its jobs at once (a node crash): its process group, and the jobs
    in its session in case they run in groups of their own."""
    jobs = job_processes(process, "train_student_baseline.py")
    os.killpg(process.pid, signal.SIGKILL)
    for job in jobs:
        with contextlib.suppress(psutil.NoSuchProcess):
            job.send_signal(signal.SIGKILL)
    return True


def start_decoy() -> subprocess.Popen:
    """Someone else's process with the training script's name in its command line, in a
    session of its own; it prints a line once running."""
    return subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)",
                             "train_student_baseline.py"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_the_kill_ends_the_job_of_its_own_session_only(tmp_path):
    """kill_training_job ends the 'training job' below the Snakemake stand-in it launched and
    leaves a process of the same command line in another session running."""
    decoy = start_decoy()
    # the stand-in's own command line must not name the script (joined here) or it would match too
    job = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
           "\"import time; print('up', flush=True); time.sleep(600)\", 'train_student_' + 'baseline.py']); p.wait()")
    launched = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert decoy.stdout.readline() == launched.stdout.readline() == "up\n"
        assert kill_training_job(launched)
        assert launched.wait(timeout=60) == 0  # its job was SIGKILLed, so the stand-in ended
        assert decoy.poll() is None
    finally:
        for process in (launched, decoy):
            process.kill()  # by its own pid; both are ours
            process.wait()


# The data rules' outputs for TINY's data settings (generated images, index, split, labelled
# store), made once: the runs that only train a baseline start from a copy of them.
DATA_TARGETS = ("results/splits/datasplit.csv", "results/store/labelled.json")


@pytest.fixture(scope="module")
def tiny_data_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny_data_run")
    snakemake(workdir, merged(TINY, {"seeds": [0]}), *DATA_TARGETS)
    return workdir


def from_data_run(data_run: Path, workdir: Path) -> Path:
    """``workdir`` with a copy of the data run's results and of Snakemake's records of them
    (file times kept): a run there finds the data up to date and starts with the training."""
    shutil.copytree(data_run / "results", workdir / "results")
    shutil.copytree(data_run / ".snakemake" / "metadata", workdir / ".snakemake" / "metadata")
    return workdir


def test_killed_training_resumes_to_the_uninterrupted_result(tiny_data_run, tmp_path):
    """Kill a real training job mid-run: Snakemake's retry resumes it from the last saved
    epoch; after a crash of Snakemake itself, --rerun-incomplete does. Either way the
    checkpoint and the history equal an uninterrupted run's."""
    # 8 epochs: the resumed part (after epoch HOLD_EPOCH) crosses the learning-rate step of
    # TINY's train.lr_step_epochs (5), so a schedule not restored would show in the history
    config = merged(TINY, {"seeds": [0], "student_baseline": {"epochs": 8}})
    assert HOLD_EPOCH < config["train"]["lr_step_epochs"] < config["student_baseline"]["epochs"]
    target = "results/models/student_baseline_0.pth"
    reference = from_data_run(tiny_data_run, tmp_path / "reference")
    snakemake(reference, config, target)

    job_killed = from_data_run(tiny_data_run, tmp_path / "job_killed")
    decoy = start_decoy()  # not ours to kill, though its command line names the training script
    try:
        assert decoy.stdout.readline() == "up\n"
        process, output = run_and_kill(job_killed, config, target, kill_training_job)
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    assert process.returncode == 0, output[-4000:]  # resources.train.retries restarted the job

    crashed = from_data_run(tiny_data_run, tmp_path / "crashed")
    process, _ = run_and_kill(crashed, config, target, kill_everything)
    assert process.returncode == -signal.SIGKILL
    snakemake(crashed, config, "--unlock")
    snakemake(crashed, config, target, "--rerun-incomplete")

    for workdir in (job_killed, crashed):
        log = (workdir / "results" / "logs" / "train_student_baseline" / "0.log").read_text()
        assert f"resuming from results/state/train_student_baseline/0.pt after epoch {HOLD_EPOCH}\n" in log, workdir.name
        assert not any((workdir / "results" / "state" / "train_student_baseline").iterdir())  # state and marker
        ours, theirs = (torch.load(d / target, map_location="cpu", weights_only=False) for d in (workdir, reference))
        assert ours["state_dict"].keys() == theirs["state_dict"].keys()
        assert all(torch.equal(ours["state_dict"][k], theirs["state_dict"][k]) for k in ours["state_dict"])
        rows = [pd.read_csv(d / "results" / "history" / "student_baseline_0.csv").drop(columns="seconds")
                for d in (workdir, reference)]
        pd.testing.assert_frame_equal(*rows)


def test_a_collapsing_run_fails_loudly(tiny_data_run, tmp_path):
    config = merged(TINY, {"seeds": [0], "train": {"pos_weight": 1e-6, "lr": 0.05, "collapse_patience": 2},
                           "student_baseline": {"epochs": 8}, "resources": {"train": {"retries": 0}}})
    workdir = from_data_run(tiny_data_run, tmp_path / "run")
    result = snakemake(workdir, config, "results/models/student_baseline_0.pth", check=False)
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "train_student_baseline" / "0.log").read_text()
    assert "TrainingCollapsed" in log and "train.collapse_patience = 2" in log
    assert not (workdir / "results" / "models" / "student_baseline_0.pth").exists()
