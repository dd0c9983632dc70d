import math

import pytest
import torch

from emkt.checkpoints import load_model, save_model
from emkt.losses import per_image_bce, per_image_bce_with_logits
from emkt.models import build_student, build_teacher, freeze


def test_per_image_bce_matches_hand_values():
    prob = torch.tensor([0.9, 0.2, 0.5, 1.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    expected = (-math.log(0.9) - math.log(0.8) - math.log(0.5) - math.log(1e-3)) / 4
    assert per_image_bce(prob, target).item() == pytest.approx(expected, rel=1e-5)
    # one value per image, never a batch mean
    two = torch.cat([prob, target.clone()])
    assert per_image_bce(two, torch.cat([target, target])).shape == (2,)


def test_bce_with_logits_agrees_and_weights_foreground():
    logits = torch.tensor([2.0, -1.0, 0.0, 3.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    plain = per_image_bce_with_logits(logits, target)
    assert plain.item() == pytest.approx(per_image_bce(torch.sigmoid(logits), target, eps=1e-7).item(), rel=1e-4)
    assert per_image_bce_with_logits(logits, target, pos_weight=3.0).item() > plain.item()


def test_student_and_teacher_shapes_and_non_negative_teacher():
    student = build_student({"patch_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2,
                             "deconv_chns": 8, "dropout_rate": 0.0}, 32)
    teacher = build_teacher({"channels": [4, 8], "strides": [2, 2], "num_res_units": 1, "dropout": 0.25, "norm": "BATCH"}, 32)
    image = torch.randn(3, 1, 32, 32)
    logits = student(image)
    assert logits.shape == (3, 1, 32, 32)
    predicted = teacher(image, torch.sigmoid(logits))
    assert predicted.shape == (3,) and (predicted >= 0).all()


def test_frozen_teacher_passes_gradients_to_its_input():
    teacher = freeze(build_teacher({"channels": [4, 8], "strides": [2, 2], "num_res_units": 1, "dropout": 0.25, "norm": "BATCH"}, 32))
    prob = torch.rand(2, 1, 32, 32, requires_grad=True)
    teacher(torch.randn(2, 1, 32, 32), prob).sum().backward()
    assert prob.grad is not None and prob.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    arch = {"channels": [4, 8], "strides": [2, 2], "num_res_units": 1, "dropout": 0.25, "norm": "BATCH"}
    teacher = build_teacher(arch, 32)
    save_model(tmp_path / "t.pth", teacher, "teacher", arch, 32, {"seed": 3})
    rebuilt, payload = load_model(tmp_path / "t.pth", expected_kind="teacher")
    assert payload["extra"] == {"seed": 3} and payload["input_size"] == 32
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key])
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed, none left behind
    with pytest.raises(ValueError, match="expected a student checkpoint"):
        load_model(tmp_path / "t.pth", expected_kind="student")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="lacks keys"):
        load_model(tmp_path / "foreign.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="junk.pth: not a readable checkpoint"):
        load_model(tmp_path / "junk.pth")
