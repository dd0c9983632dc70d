"""The mean-teacher condition's pieces: the EMA update, the weak-to-strong consistency target
under flips and rotations, ignored pixels, and the stage on tiny data (epoch 0, resume)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import emkt.training.validation
from emkt.augment import StrongAugmentation, apply_geometry
from emkt.acceleration import Runtime
from emkt.losses import per_image_loss
from emkt.models import build_student
from emkt.resume import Checkpointing
from emkt.runtime import seed_everything
from emkt.training.mean_teacher import consistency_loss, consistency_targets, ema_update, mean_teacher_train

CPU = torch.device("cpu")
VIT = {"patch_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2, "deconv_chns": 8,
       "dropout_rate": 0.0}
# strong intensity changes that change nothing: the geometry alone
NO_INTENSITY = {"gamma": [1.0, 1.0], "blur_sigma": [1e-6, 1e-6], "scale": 0.0, "shift": 0.0, "noise_std": 0.0}
STRONG = {"gamma": [0.5, 2.0], "blur_sigma": [0.25, 1.5], "scale": 0.3, "shift": 0.3, "noise_std": 0.2}
SETTINGS = {"threshold": 0.9, "target": "hard"}


class PixelNet(torch.nn.Module):
    """A per-pixel network (a 1x1 convolution): it commutes with flips and rotations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.norm = torch.nn.BatchNorm2d(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(image))


def test_ema_update_moves_weights_by_one_minus_decay_and_copies_buffers():
    torch.manual_seed(0)
    ema, model = PixelNet(), PixelNet()
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model.norm.running_mean.fill_(3.0)
    ema_update(ema, model, decay=0.9)
    for (name, parameter), source in zip(ema.named_parameters(), model.parameters()):
        assert torch.allclose(parameter, 0.9 * before[name] + 0.1 * source), name
    assert torch.equal(ema.norm.running_mean, model.norm.running_mean)
    ema_update(ema, model, decay=0.0)  # no memory: the model itself
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))


def test_apply_geometry_is_the_dihedral_move_of_each_image():
    batch = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    geometry = torch.tensor([[1, 0], [3, 1]])
    moved = apply_geometry(batch, geometry)
    assert torch.equal(moved[0], torch.rot90(batch[0], 1, dims=(-2, -1)))
    assert torch.equal(moved[1], torch.rot90(batch[1].flip(-1), 3, dims=(-2, -1)))


def test_consistency_target_follows_the_strong_views_geometry():
    """A network that commutes with the moves, as teacher and student alike, agrees with itself
    on the strong view exactly when the target is moved as its input was."""
    torch.manual_seed(0)
    net = PixelNet().eval()
    weak = torch.randn(6, 1, 8, 8)
    augmentation = StrongAugmentation(NO_INTENSITY, 0)
    strong, geometry = augmentation(weak)
    assert (geometry[:, 0] % 4 != 0).any() or (geometry[:, 1] == 1).any()  # some image really moves
    with torch.no_grad():
        teacher_prob, student_prob = torch.sigmoid(net(weak)), torch.sigmoid(net(strong))
    assert torch.allclose(apply_geometry(teacher_prob, geometry), student_prob, atol=1e-5)
    assert not torch.allclose(teacher_prob, student_prob, atol=1e-3)  # unmoved, the target would be wrong


def test_strong_view_changes_intensities_and_is_reproducible():
    weak = torch.randn(4, 1, 16, 16)
    first, geometry = StrongAugmentation(STRONG, (3, 1))(weak)
    again, same_geometry = StrongAugmentation(STRONG, (3, 1))(weak)
    assert torch.equal(first, again) and torch.equal(geometry, same_geometry)
    assert not torch.allclose(first, apply_geometry(weak, geometry), atol=1e-2)


def test_unconfident_pixels_give_no_gradient():
    torch.manual_seed(1)
    teacher_prob = torch.rand(2, 1, 8, 8)
    labels, confident = consistency_targets(teacher_prob, threshold=0.8)
    assert 0 < confident.mean() < 1
    assert torch.equal(labels, (teacher_prob >= 0.5).float())
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    per_image_loss(logits, labels, valid=confident).sum().backward()
    assert (logits.grad[confident == 0] == 0).all() and (logits.grad[confident == 1] != 0).all()
    soft, _ = consistency_targets(teacher_prob, threshold=0.8, target="soft")
    assert torch.equal(soft, teacher_prob)


def test_consistency_loss_trains_the_student_only_where_the_teacher_is_confident():
    torch.manual_seed(2)
    teacher, student = PixelNet().eval(), PixelNet()
    with torch.no_grad():
        teacher.conv.weight.fill_(3.0)  # confident on the brighter and darker pixels only
    weak = torch.randn(4, 1, 8, 8)
    pixel_logits = {}

    def keep_logits(module, inputs, output):
        output.retain_grad()
        pixel_logits["value"] = output

    student.register_forward_hook(keep_logits)
    loss, values = consistency_loss(student, teacher, weak, StrongAugmentation(STRONG, 5), SETTINGS, 1.0, Runtime(CPU))
    loss.sum().backward()
    with torch.no_grad():  # the same seed draws the same geometry
        _, geometry = StrongAugmentation(STRONG, 5)(weak)
        _, confident = consistency_targets(apply_geometry(torch.sigmoid(teacher(weak)), geometry), 0.9)
    grad = pixel_logits["value"].grad
    assert 0 < float(values["confident_fraction"]) < 1
    assert (grad[confident == 0] == 0).all() and (grad[confident == 1] != 0).any()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.slow
def test_mean_teacher_stage_keeps_its_start_and_resumes_with_its_ema_teacher(tiny_config, tiny_data, tmp_path,
                                                                            monkeypatch):
    """From a trained student it validates epoch 0 first and keeps it when no epoch beats it;
    the EMA teacher is part of the resumable state, so a job stopped after epoch 1 continues."""
    torch.set_num_threads(1)
    seed_everything(0)
    config = {**tiny_config, "mean_teacher": {**tiny_config["mean_teacher"], "threshold": 0.6}}
    start = build_student(VIT, 32)
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    scores = iter([0.5, 0.4, 0.3])  # the start, then each epoch: training only hurts

    def validation(student, items, cfg, runtime):
        iou = next(scores)
        return {"iou": iou, "dice": 2 * iou / (1 + iou), "bce": 1.0 - iou, "predicted_fraction": 0.2}, []

    monkeypatch.setattr(emkt.training.validation, "student_validation", validation)
    state = Checkpointing(tmp_path / "state.pt", "fingerprint")
    one_epoch = {**config, "expand": {**config["expand"], "epochs": 1}}
    mean_teacher_train(one_epoch, 0, tiny_data, start, tmp_path / "mt.csv", CPU, state, from_trained=True)
    saved = torch.load(tmp_path / "state.pt", weights_only=False)["objects"]
    ema, trained = saved["model:ema_teacher"], saved["model:student"]
    assert any(not torch.equal(ema[key], trained[key]) for key in ema)  # the EMA lags the student

    kept = mean_teacher_train(config, 0, tiny_data, build_student(VIT, 32), tmp_path / "mt.csv", CPU, state,
                              from_trained=True)
    history = pd.read_csv(tmp_path / "mt.csv")
    assert list(history["epoch"]) == [0, 1, 2] and list(history["val_iou"]) == [0.5, 0.4, 0.3]
    assert {"train_pool_bce", "train_confident_fraction", "train_target_foreground"} <= set(history.columns)
    assert (history["train_pool_images"].iloc[1:] == config["expand"]["images_per_epoch"]).all()
    assert kept.kept_epoch == 0
    assert all(torch.equal(value, kept.student.state_dict()[key]) for key, value in start_state.items())
