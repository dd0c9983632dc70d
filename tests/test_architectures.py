"""Student and teacher architectures as a config choice (student.type, teacher.type): each
trains, records its type in its checkpoint, loads back through the one loader that predict
and evaluation use, and gives every parameter a gradient (what data-parallel training needs)."""

from __future__ import annotations

import pytest
import torch

from conftest import merged
from emkt.checkpoints import check_arch, load_model, save_model
from emkt.config import validate_config
from emkt.models import (STUDENT_TYPES, ErrorMapPredictor, LossPredictor, SwinSegmenter, ViTLossPredictor,
                         ViTSegmenter, build_student, build_teacher, student_arch, teacher_arch)
from emkt.runtime import seed_everything
from emkt.training.supervised import train_student_baseline
from emkt.training.teacher import pretrain_teacher

CPU = torch.device("cpu")
# the tiny settings of each type (SwinUNETR needs 64 px: a 2x2 bottleneck, for its instance norm)
TINY_TYPES = {
    "vitautoenc": {},
    "swinunetr": {"swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}},
    "unet": {"unet": {"width": 4, "depth": 3}},
}
SIZE = {"vitautoenc": 32, "swinunetr": 64, "unet": 32}
TINY_VIT_TEACHER = {"type": "vit", "vit": {"patch_size": 8, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1,
                                           "num_heads": 2, "dropout_rate": 0.0}}


def student_config(tiny_config: dict, kind: str) -> dict:
    return validate_config(merged(tiny_config, {"student": {"type": kind, **TINY_TYPES[kind]},
                                                "input_size": SIZE[kind], "store": {"pool_tile": SIZE[kind]}}))


@pytest.mark.parametrize("kind", STUDENT_TYPES)
def test_every_parameter_of_each_student_type_gets_a_gradient(tiny_config, kind):
    student = build_student(student_config(tiny_config, kind)["student"], SIZE[kind])
    student(torch.randn(2, 1, SIZE[kind], SIZE[kind])).mean().backward()
    assert [name for name, p in student.named_parameters() if p.requires_grad and p.grad is None] == []


@pytest.mark.parametrize("kind", STUDENT_TYPES)
def test_each_student_type_trains_and_its_checkpoint_records_the_type(tiny_config, tiny_data, tmp_path, kind):
    torch.set_num_threads(1)
    seed_everything(0)
    config = student_config(merged(tiny_config, {"student_baseline": {"epochs": 1}}), kind)
    student = train_student_baseline(config, 0, tiny_data, tmp_path / "history.csv", CPU)
    save_model(tmp_path / "student.pth", student, "student", config["student"], SIZE[kind])  # as the rules do
    loaded, checkpoint = load_model(tmp_path / "student.pth", expected_kind="student")
    assert checkpoint["arch"] == student_arch(config["student"]) and checkpoint["arch"]["type"] == kind
    expected = {"vitautoenc": ViTSegmenter, "swinunetr": SwinSegmenter, "unet": torch.nn.Module}[kind]
    assert isinstance(loaded, expected)
    image = torch.randn(1, 1, SIZE[kind], SIZE[kind])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(image), student.eval()(image))


def test_student_arch_keeps_only_the_chosen_types_settings(paper_config):
    student = paper_config["student"]
    assert student_arch(student) == {"type": "vitautoenc", "patch_size": 16, "hidden_size": 768, "mlp_dim": 3072,
                                     "num_layers": 12, "num_heads": 12, "deconv_chns": 16, "dropout_rate": 0.0}
    assert student_arch({**student, "type": "unet"}) == {"type": "unet", "width": 32, "depth": 5}
    swin = student_arch({**student, "type": "swinunetr"})
    assert swin["type"] == "swinunetr" and swin["feature_size"] == 24 and swin["use_v2"] is True
    assert student_arch(swin) == swin  # a checkpoint's flat arch stays as it is
    # checkpoints written before student types had no 'type': a ViTAutoEnc
    untyped = {key: value for key, value in student_arch(student).items() if key != "type"}
    check_arch("student", untyped)
    assert isinstance(build_student(untyped, 224), ViTSegmenter)
    with pytest.raises(ValueError, match="unknown student type 'resnet'"):
        check_arch("student", {"type": "resnet"}, "x.pth")
    with pytest.raises(ValueError, match=r"x.pth: the student arch lacks \['width'\]"):
        check_arch("student", {"type": "unet", "depth": 3}, "x.pth")


def test_teacher_arch_of_each_type(paper_config):
    assert teacher_arch(paper_config, "critic") == {"type": "critic", "channels": [16, 32, 64, 128],
                                                    "strides": [2, 2, 2, 2], "num_res_units": 2, "dropout": 0.25,
                                                    "norm": "BATCH"}
    paper_config["teacher"]["type"] = "vit"
    vit = teacher_arch(paper_config, "critic")  # the scalar teacher, whatever its network
    assert vit == {"type": "vit", "patch_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12,
                   "num_heads": 12, "dropout_rate": 0.0}
    assert teacher_arch(paper_config, "error_map")["type"] == "error_map"
    for arch, network in [(vit, ViTLossPredictor), (teacher_arch(paper_config, "error_map"), ErrorMapPredictor)]:
        check_arch("teacher", arch)
        assert type(build_teacher(arch, 224)) is network
    untyped = {key: value for key, value in teacher_arch({"teacher": {**paper_config["teacher"], "type": "critic"}},
                                                         "critic").items() if key != "type"}
    assert type(build_teacher(untyped, 224)) is LossPredictor


def test_vit_teacher_pretrains_and_loads_back(tiny_config, tiny_data, tmp_path):
    torch.set_num_threads(1)
    seed_everything(0)
    config = validate_config(merged(tiny_config, {"teacher": TINY_VIT_TEACHER, "teacher_pretrain": {"epochs": 1}}))
    teacher = pretrain_teacher(config, 0, tiny_data, tmp_path / "pretrain.csv", CPU)
    assert isinstance(teacher, ViTLossPredictor)
    save_model(tmp_path / "teacher.pth", teacher, "teacher", teacher_arch(config, "critic"), 32)
    loaded, checkpoint = load_model(tmp_path / "teacher.pth", expected_kind="teacher")
    assert checkpoint["arch"]["type"] == "vit"
    image, prob = torch.randn(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        predicted = loaded.eval()(image, prob)
    assert predicted.shape == (2,) and (predicted >= 0).all()
    assert torch.equal(predicted, teacher.eval()(image, prob).detach())
