"""The CUDA code path: every training stage, inference and cost measurement on a GPU.

Skipped where no GPU is present (CI); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. Settings are the tiny ones of the other tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, TINY, make_tiny_data, merged
from emkt.config import load_config
from emkt.costs import inference_cost
from emkt.data import normalise_image
from emkt.evaluate import evaluate_segmenter
from emkt.models import EnsembleSegmenter, build_segmenter
from emkt.inference import soft_labels, write_pseudo_labels
from emkt.runtime import select_device
from emkt.store import LabelledStore, SoftLabelStore, write_manifest, write_soft_labels
from emkt.training import (distill_from_soft_labels, expand_student, feature_distill, joint_train, pretrain_teacher,
                           self_train, train_segmenter, train_student_baseline)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
GPU = torch.device("cuda")


@pytest.fixture(scope="module")
def gpu_setup(tmp_path_factory):
    config = merged(load_config(REPO / "config.yaml"), merged(TINY, {"device": "cuda", "loader": {"num_workers": 2}}))
    return config, make_tiny_data(tmp_path_factory.mktemp("data"), config)


def on_gpu(model: torch.nn.Module) -> bool:
    return all(p.device.type == "cuda" for p in model.parameters())


def test_auto_selects_the_gpu():
    assert select_device("auto").type == "cuda"


def test_every_stage_trains_on_the_gpu(gpu_setup, tmp_path):
    config, files = gpu_setup
    teacher = pretrain_teacher(config, 0, files, tmp_path / "pre.csv", GPU)
    baseline = train_student_baseline(config, 0, files, tmp_path / "base.csv", GPU)
    teacher, joint = joint_train(config, 0, files, teacher, tmp_path / "joint.csv", GPU)
    expanded = expand_student(config, 0, files, joint, [teacher], tmp_path / "expand.csv", GPU,
                              variant="alternating").student
    unet = train_segmenter(config, 0, files, build_segmenter(config["segmenters"]["unet"]), 2, tmp_path / "u.csv", GPU)
    assert all(on_gpu(m) for m in (teacher, baseline, joint, expanded, unet))

    ensemble = EnsembleSegmenter([baseline, unet]).to(GPU)
    store = LabelledStore(files.labelled)
    ids = pd.read_csv(files.split).query("split == 'train'")["id"]
    images = [(int(i), normalise_image(store.image(i))) for i in ids]
    write_soft_labels(soft_labels(ensemble, images, config["input_size"], 0.25, 4, GPU), tmp_path / "s.bin",
                      tmp_path / "s.csv")
    distilled = distill_from_soft_labels(config, 0, files, SoftLabelStore(tmp_path / "s.csv"), tmp_path / "d.csv", GPU)

    shards = sorted((files.pool.parent / "pool").glob("shard-?????.npy"))
    outputs = [tmp_path / "pseudo" / shard.name for shard in shards]
    for shard, out in zip(shards, outputs):
        write_pseudo_labels(unet, shard, out, config["input_size"], 0.25, 4, GPU)
    write_manifest("pseudo", outputs, tmp_path / "pseudo.json", tile=config["store"]["pool_tile"])
    pseudo = self_train(config, 0, files, tmp_path / "pseudo.json", baseline, tmp_path / "p.csv", GPU,
                        from_trained=True, threshold=0.9).student
    small = feature_distill(config, 0, files, baseline, tmp_path / "f.csv", GPU)
    assert all(on_gpu(m) for m in (distilled, pseudo, small))
    for name in ("pre", "base", "joint", "expand", "u", "d", "p", "f"):
        history = pd.read_csv(tmp_path / f"{name}.csv")
        assert np.isfinite(history.drop(columns=["lr", "seconds"]).select_dtypes("number").to_numpy()).all(), name


def test_gpu_inference_matches_the_cpu_and_reports_gpu_memory(gpu_setup):
    config, files = gpu_setup
    model = build_segmenter(config["segmenters"]["unet"]).eval()
    items = files.split_items("test")
    cpu, _, _ = evaluate_segmenter(model, items, config["input_size"], 0.25, 4, torch.device("cpu"))
    gpu, _, _ = evaluate_segmenter(model.to(GPU), items, config["input_size"], 0.25, 4, GPU)
    assert gpu["iou"] == pytest.approx(cpu["iou"], abs=1e-3)
    cost = inference_cost(model, 16, config["input_size"], GPU)
    assert cost["peak_memory_mb"] > 0 and cost["images_per_s"] > 0
