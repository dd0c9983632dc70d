"""The distillation conditions' pieces: segmenters and their ensemble, soft and pseudo-label
stores, feature taps, the three training stages, inference cost and teacher agreement."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import merged
import emkt.training.validation
from emkt.checkpoints import SEGMENTATION_KINDS, ensemble_arch, kept_epoch_extra, load_model, save_model
from emkt.config import ConfigError, validate_config
from emkt.costs import checkpoint_inference_costs, inference_cost
from emkt.data import normalise_image
from emkt.datasets import PoolCrops
from emkt.metrics import agreement_with_reference, count_objects
from emkt.models import (EnsembleSegmenter, FeatureProjection, FeatureTap, build_segmenter, build_student,
                         probability_logit)
from emkt.inference import soft_labels, write_pseudo_labels
from emkt.runtime import seed_everything
from emkt.store import LabelledStore, SoftLabelStore, TileStore, write_manifest, write_soft_labels
from emkt.training.distillation import distill_from_soft_labels, feature_distill
from emkt.training.self_training import self_train

CPU = torch.device("cpu")
VIT = {"patch_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2, "deconv_chns": 8,
       "dropout_rate": 0.0}




class ConstantLogit(torch.nn.Module):
    """A 'segmenter' predicting the same logit everywhere (known probabilities)."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logit * torch.ones_like(image)


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("arch", [{"type": "unet", "width": 4, "depth": 3},
                                  {"type": "basicunet", "width": 4},
                                  {"type": "segresnet", "width": 8, "depth": 3}])
def test_segmenters_map_an_image_to_one_logit_channel(arch):
    out = build_segmenter(arch)(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32)


def test_ensemble_averages_member_probabilities_and_round_trips(tmp_path):
    members = [ConstantLogit(0.0), ConstantLogit(2.0)]
    ensemble = EnsembleSegmenter(members)
    image = torch.zeros(1, 1, 4, 4)
    p = (0.5 + torch.sigmoid(torch.tensor(2.0))) / 2
    assert torch.allclose(torch.sigmoid(ensemble(image)), p.expand(1, 1, 4, 4))
    maps = ensemble.mean_and_sd(image, temperature=2.0)
    expected = torch.stack([torch.tensor(0.5), torch.sigmoid(torch.tensor(1.0))])
    assert torch.allclose(maps[0, 0], expected.mean().expand(4, 4))
    assert torch.allclose(maps[0, 1], expected.std(unbiased=False).expand(4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleSegmenter([ConstantLogit(0.0)])

    unet, vit = build_segmenter({"type": "unet", "width": 4, "depth": 3}), build_student(VIT, 32)
    save_model(tmp_path / "unet.pth", unet, "segmenter", {"type": "unet", "width": 4, "depth": 3}, 32)
    save_model(tmp_path / "vit.pth", vit, "student", VIT, 32)
    checkpoints = [load_model(tmp_path / n, SEGMENTATION_KINDS)[1] for n in ("unet.pth", "vit.pth")]
    real = EnsembleSegmenter([unet, vit]).eval()
    save_model(tmp_path / "ensemble.pth", real, "ensemble", ensemble_arch(checkpoints), 32)
    rebuilt, payload = load_model(tmp_path / "ensemble.pth", SEGMENTATION_KINDS)
    x = torch.randn(2, 1, 32, 32)
    assert payload["kind"] == "ensemble" and torch.equal(rebuilt.eval()(x), real(x))
    with pytest.raises(ValueError, match="expected a teacher checkpoint, found a ensemble"):
        load_model(tmp_path / "ensemble.pth", "teacher")


def test_probability_logit_is_finite_at_certainty():
    assert torch.isfinite(probability_logit(torch.tensor([0.0, 1.0]))).all()


def test_feature_tap_turns_vit_tokens_into_a_map_and_projection_matches_channels():
    vit = build_student(VIT, 32)
    tap = FeatureTap(vit)
    vit(torch.randn(2, 1, 32, 32))
    assert tap.layer == "net.blocks.0" and tap.output.shape == (2, 32, 8, 8)
    projection = FeatureProjection(32, 64)
    assert projection(tap.output, (4, 4)).shape == (2, 64, 4, 4)
    assert isinstance(FeatureProjection(32, 32).conv, torch.nn.Identity)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureTap(vit, "nope")
    with pytest.raises(ValueError, match="has no default feature layer"):
        FeatureTap(build_segmenter({"type": "basicunet", "width": 4}))
    unet = build_segmenter({"type": "unet", "width": 4, "depth": 3})
    assert FeatureTap(unet).layer == "model.1.submodule.1.submodule"  # the UNet's bottleneck
    conv_tap = FeatureTap(unet, "model.1")
    unet(torch.randn(1, 1, 32, 32))
    assert conv_tap.output.ndim == 4


# ---------------------------------------------------------------- soft and pseudo labels

def test_soft_labels_round_trip_within_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    maps = {7: (rng.random((5, 9)), rng.random((5, 9)) / 2), 3: (rng.random((4, 4)), np.zeros((4, 4)))}
    write_soft_labels(((k, m, s) for k, (m, s) in maps.items()), tmp_path / "soft.bin", tmp_path / "soft.csv")
    store = SoftLabelStore(tmp_path / "soft.csv")
    for key, (mean, sd) in maps.items():
        assert np.abs(store.mean(key) - mean).max() <= 0.5 / 255 + 1e-6
        assert np.abs(store.sd(key) - sd).max() <= 0.5 / 510 + 1e-6
    with pytest.raises(ValueError, match="no soft labels for image id 5"):
        store.mean(5)


def test_ensemble_soft_labels_of_whole_images_keep_their_shape():
    ensemble = EnsembleSegmenter([ConstantLogit(0.0), ConstantLogit(4.0)])
    images = [(1, np.random.default_rng(1).normal(size=(40, 70)).astype(np.float32))]
    ((image_id, mean, sd),) = list(soft_labels(ensemble, images, 32, 0.25, 4, CPU))
    high = torch.sigmoid(torch.tensor(4.0)).item()
    assert image_id == 1 and mean.shape == sd.shape == (40, 70)
    assert np.allclose(mean, (0.5 + high) / 2, atol=1e-5) and np.allclose(sd, (high - 0.5) / 2, atol=1e-5)


def test_pseudo_labels_follow_the_pool_layout_and_crop_with_the_pool(tiny_data, tmp_path):
    pool_manifest = tiny_data.pool
    pool = TileStore(pool_manifest)
    shards = [pool_manifest.parent / "pool" / f"shard-{k:05d}.npy" for k in range(2)]
    outputs = [tmp_path / "pseudo" / s.name for s in shards]
    for shard, out in zip(shards, outputs):
        write_pseudo_labels(ConstantLogit(1.0), shard, out, 32, 0.25, 4, CPU, chunk=5)
    write_manifest("pseudo", outputs, tmp_path / "pseudo.json", tile=pool.tile)
    pseudo = TileStore(tmp_path / "pseudo.json", "pseudo")
    assert len(pseudo) == len(pool) and pseudo.tile == pool.tile
    expected = round(torch.sigmoid(torch.tensor(1.0)).item() * 255)
    assert (pseudo.tiles(range(len(pseudo))) == expected).all()
    with pytest.raises(ValueError, match="expected 'pool'"):
        TileStore(tmp_path / "pseudo.json")

    # Pool tiles as their own "pseudo-labels": each crop's pseudo map is its image, un-normalised,
    # through random crops and flips alike.
    write_manifest("pseudo", shards, tmp_path / "same.json", tile=pool.tile)
    from emkt.augment import train_augmentation

    crops = PoolCrops(pool, 32, seed=4, transform=train_augmentation(4, intensity=False, keys=("image", "pseudo")),
                      pseudo=TileStore(tmp_path / "same.json", "pseudo"))
    for index in range(len(crops)):
        sample = crops[index]
        tile = pool.tile_at(index).astype(np.float32)
        image = sample["image"][0].numpy()
        restored = image * tile.std() + tile.mean()
        assert np.allclose(restored / 255.0, sample["pseudo"][0].numpy(), atol=1e-4)


# ---------------------------------------------------------------- training stages

def pseudo_manifest(labeller: torch.nn.Module, tiny_data, tmp_path) -> str:
    """The pool's pseudo-labels by ``labeller``, written as a store; returns its manifest."""
    pool = TileStore(tiny_data.pool)
    shards = [tiny_data.pool.parent / "pool" / f"shard-{k:05d}.npy" for k in range(2)]
    outputs = [tmp_path / "pseudo" / s.name for s in shards]
    for shard, out in zip(shards, outputs):
        write_pseudo_labels(labeller, shard, out, 32, 0.25, 4, CPU)
    write_manifest("pseudo", outputs, tmp_path / "pseudo.json", tile=pool.tile)
    return tmp_path / "pseudo.json"


@pytest.mark.slow
def test_ensemble_distillation_self_training_and_feature_distillation_run_and_log(tiny_config, tiny_data, tmp_path):
    torch.set_num_threads(1)
    seed_everything(0)
    train_ids = pd.read_csv(tiny_data.split).query("split == 'train'")["id"]
    labelled = LabelledStore(tiny_data.labelled)
    ensemble = EnsembleSegmenter([build_segmenter({"type": "unet", "width": 4, "depth": 3}), build_student(VIT, 32)])
    images = [(int(i), normalise_image(labelled.image(i))) for i in train_ids]
    write_soft_labels(soft_labels(ensemble, images, 32, 0.25, 4, CPU), tmp_path / "s.bin", tmp_path / "s.csv")
    student = distill_from_soft_labels(tiny_config, 0, tiny_data, SoftLabelStore(tmp_path / "s.csv"),
                                       tmp_path / "distilled.csv", CPU)
    distilled = pd.read_csv(tmp_path / "distilled.csv")
    assert {"train_bce", "train_soft_mse", "val_iou"} <= set(distilled.columns)
    assert len(distilled) == tiny_config["ensemble_distillation"]["epochs"]

    kept = self_train(tiny_config, 0, tiny_data, pseudo_manifest(student, tiny_data, tmp_path),
                      build_student(VIT, 32), tmp_path / "self.csv", CPU, from_trained=False, threshold=0.9)
    history = pd.read_csv(tmp_path / "self.csv")
    assert {"train_bce", "train_pool_bce", "train_confident_fraction", "val_iou"} <= set(history.columns)
    # from scratch there is no epoch 0 to keep
    assert list(history["epoch"]) == [1, 2] and kept.kept_epoch == history["epoch"][history["val_iou"].idxmax()]
    # As many pool images per epoch as expansion sees.
    assert (history["train_pool_images"] == tiny_config["expand"]["images_per_epoch"]).all()

    teacher = build_student(VIT, 32)
    small = feature_distill(tiny_config, 0, tiny_data, teacher, tmp_path / "feature.csv", CPU)
    history = pd.read_csv(tmp_path / "feature.csv")
    assert {"train_bce", "train_feature_mse", "train_response_bce", "val_iou"} <= set(history.columns)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert not teacher._forward_hooks and not any(m._forward_hooks for m in teacher.modules())


def test_self_training_from_a_trained_student_keeps_its_start_when_no_epoch_beats_it(tiny_config, tiny_data,
                                                                                    tmp_path, monkeypatch):
    """As expansion: fine-tuning a trained student validates it first (epoch 0) and keeps it
    when every epoch is worse on validation; its checkpoint says which epoch and from what."""
    torch.set_num_threads(1)
    seed_everything(0)
    start = build_student(VIT, 32)
    manifest = pseudo_manifest(start, tiny_data, tmp_path)
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    scores = iter([0.5, 0.4, 0.3])  # validation IoU of the start, then of each epoch: training only hurts

    def validation(student, items, cfg, runtime):
        iou = next(scores)
        return {"iou": iou, "dice": 2 * iou / (1 + iou), "bce": 1.0 - iou, "predicted_fraction": 0.2}, []

    monkeypatch.setattr(emkt.training.validation, "student_validation", validation)
    kept = self_train(tiny_config, 0, tiny_data, manifest, start, tmp_path / "self.csv", CPU, from_trained=True,
                      threshold=0.9)
    history = pd.read_csv(tmp_path / "self.csv")
    assert list(history["epoch"]) == [0, 1, 2] and list(history["val_iou"]) == [0.5, 0.4, 0.3]
    assert history["train_pool_bce"].iloc[1:].notna().all()  # both epochs trained
    assert kept.kept_epoch == 0
    assert all(torch.equal(value, kept.student.state_dict()[key]) for key, value in start_state.items())
    # what train_pseudo_labelled.py writes, as evaluation reads it
    save_model(tmp_path / "p.pth", kept.student, "student", VIT, 32,
               {"condition": "pseudo_labelled", "seed": 0, **kept_epoch_extra(kept.kept_epoch, "baseline")})
    assert load_model(tmp_path / "p.pth")[1]["extra"] == {"condition": "pseudo_labelled", "seed": 0,
                                                           "kept_epoch": 0, "fine_tuned_from": "baseline"}
    assert kept_epoch_extra(2) == {"kept_epoch": 2}  # from scratch: no start to name


# ---------------------------------------------------------------- costs, agreement, config

def test_inference_cost_reports_parameters_speed_and_memory():
    model = build_segmenter({"type": "unet", "width": 4, "depth": 3})
    cost = inference_cost(model, 4, 32, CPU, warmup=1, repeats=2)
    assert cost["parameters"] == sum(p.numel() for p in model.parameters())
    assert cost["images_per_s"] > 0 and cost["peak_memory_mb"] > 0


@pytest.mark.slow
def test_checkpoint_costs_measure_each_network_as_if_it_ran_alone(tmp_path):
    """One job measures several networks: each in a process forked before any of them ran, so
    that memory a network freed does not hide the next one's peak; a file that is no network
    fails naming itself."""
    arch = {"type": "unet", "width": 8, "depth": 3}
    paths = [tmp_path / f"unet{k}.pth" for k in range(2)]
    for path in paths:
        save_model(path, build_segmenter(arch), "segmenter", arch, 64)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    # This process has run networks: the forks come from a fresh Python process.
    first, second = checkpoint_inference_costs(paths, 8, CPU)
    assert first["parameters"] == second["parameters"] == sum(p.numel() for p in build_segmenter(arch).parameters())
    assert first["images_per_s"] > 0 and second["images_per_s"] > 0
    assert 0.5 < second["peak_memory_mb"] / first["peak_memory_mb"] < 2
    # A job that has run no network yet, on one thread (evaluate_networks), forks from itself:
    # the same numbers of parameters; a broken file fails naming itself (either way).
    probe = ("import json, sys, torch\n"
             "from emkt.costs import checkpoint_inference_costs\n"
             "torch.set_num_threads(1)\n"
             "cpu = torch.device('cpu')\n"
             "print(json.dumps(checkpoint_inference_costs(sys.argv[1:3], 8, cpu, nothing_ran_here=True)))\n"
             "checkpoint_inference_costs(sys.argv[3:], 8, cpu, nothing_ran_here=True)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", probe, *map(str, paths), str(tmp_path / "broken.pth")],
                          capture_output=True, text=True, timeout=300, env=env)
    forked_here = json.loads(done.stdout.strip().splitlines()[-1])
    assert [c["parameters"] for c in forked_here] == [first["parameters"], second["parameters"]]
    assert all(c["images_per_s"] > 0 and c["peak_memory_mb"] > 0 for c in forked_here)
    assert done.returncode != 0 and re.search(r"RuntimeError: \S*broken.pth: measuring its inference cost failed",
                                              done.stderr), done.stderr[-3000:]


def test_agreement_with_the_teacher_counts_objects():
    teacher = np.zeros((10, 10), np.float32)
    teacher[1:3, 1:3] = teacher[6:8, 6:8] = 1
    student = teacher.copy()
    student[6:8, 6:8] = 0
    assert count_objects(teacher >= 0.5) == 2
    assert agreement_with_reference([teacher], [teacher]) == {"iou_vs_teacher": 1.0, "count_diff_vs_teacher": 0.0}
    values = agreement_with_reference([student, teacher], [teacher, teacher])
    assert values == {"iou_vs_teacher": pytest.approx(12 / 16), "count_diff_vs_teacher": 0.5}
    valid = np.ones_like(teacher, dtype=np.uint8)
    valid[5:, 5:] = 0  # the missing object lies where nothing is labelled
    assert agreement_with_reference([student], [teacher], [valid])["count_diff_vs_teacher"] == 0.0


@pytest.mark.parametrize("change, message", [
    ({"conditions": ["expansion"]}, "must include 'baseline'"),
    ({"conditions": ["baseline", "bagging"]}, "'conditions.1' = 'bagging' is not allowed"),
    ({"ensemble_distillation": {"members": ["baseline", "resnet"]}}, "names 'resnet'"),
    ({"pseudo_label": {"teacher": "vit"}}, "'pseudo_label.teacher' = 'vit' is not allowed"),
    ({"feature_distillation": {"student": dict(VIT, num_layers=12, hidden_size=768, num_heads=12)}},
     "fewer layers"),
    ({"input_size": 48, "segmenters": {"big": {"type": "unet", "width": 4, "depth": 6, "epochs": 1}}}, "divisible by 32"),
    ({"segmenters": {"Bad-Name": {"type": "unet", "width": 4, "epochs": 1}}}, "Bad-Name"),
    ({"segmenters": {"b": {"type": "basicunet", "width": 4, "depth": 3, "epochs": 1}}}, "always has 5 levels"),
])
def test_bad_condition_settings_name_the_key(paper_config, change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(merged(paper_config, change))
