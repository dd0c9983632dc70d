import math

import numpy as np
import pytest
import torch
from torch import nn

from emkt.checkpoints import load_model, save_model
from emkt.data import masks_from_labels
from emkt.losses import (PROB_EPS, per_image_kl_with_logits, per_image_loss, per_image_loss_of_prob, per_image_mse,
                         pixel_loss_of_prob)
from emkt.models import build_student, build_teacher, freeze
from emkt.training.teacher import teacher_regression
from emkt.training.validation import probability_sums


def test_per_image_loss_of_prob_matches_hand_values():
    prob = torch.tensor([0.9, 0.2, 0.5, 1.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    expected = (-math.log(0.9) - math.log(0.8) - math.log(0.5) - math.log(1e-3)) / 4
    assert per_image_loss_of_prob(prob, target).item() == pytest.approx(expected, rel=1e-5)
    # one value per image, never a batch mean
    two = torch.cat([prob, target.clone()])
    assert per_image_loss_of_prob(two, torch.cat([target, target])).shape == (2,)


def hand_bce(logits: np.ndarray, target: np.ndarray, pos_weight: float) -> np.ndarray:
    """-(w t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) per pixel, in float64."""
    log_p, log_not_p = -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)
    return -(pos_weight * target * log_p + (1.0 - target) * log_not_p)


def hand_mean(pixel: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.array([pixel[i][valid[i] > 0].mean() if valid[i].any() else 0.0 for i in range(len(pixel))])


# Two 2x4 images: right and wrong pixels, confident ones past the clamp (|z| > logit(1 - 1e-3)
# ~ 6.9) among them, and ignored pixels (valid 0) holding the worst errors.
LOGITS = np.array([[[[8.0, -9.0, 2.0, 0.5], [-8.0, 9.0, -1.0, 12.0]]],
                   [[[-3.0, 1.5, 7.5, -0.2], [4.0, -6.0, 3.0, -12.0]]]])
MASK = np.array([[[[1, 1, 1, 0], [0, 0, 1, 1]]],
                 [[[1, 0, 0, 1], [1, 0, 1, 1]]]], dtype=np.float64)
VALID = np.array([[[[1, 1, 1, 1], [1, 1, 1, 0]]],
                  [[[1, 1, 0, 1], [1, 1, 1, 0]]]], dtype=np.float64)


def test_the_teacher_target_is_the_students_weighted_loss_within_the_clamp():
    logits, mask, valid = (torch.from_numpy(a).float() for a in (LOGITS, MASK, VALID))
    limit = math.log((1 - PROB_EPS) / PROB_EPS)
    prob = torch.sigmoid(logits)
    student = hand_mean(hand_bce(LOGITS, MASK, 3.0), VALID)
    assert per_image_loss(logits, mask, 3.0, valid=valid).numpy() == pytest.approx(student, rel=1e-5)
    # the teacher's target: the same loss, of the logits clamped to +-logit(1 - eps)
    clamped = hand_mean(hand_bce(np.clip(LOGITS, -limit, limit), MASK, 3.0), VALID)
    target = per_image_loss_of_prob(prob, mask, 3.0, valid=valid)
    assert target.numpy() == pytest.approx(clamped, rel=1e-4)
    # the confidently wrong, unclamped pixels (-9 and 9 against their labels) cost the student more
    assert student[0] > clamped[0] + 0.1 and student[1] == pytest.approx(clamped[1], rel=1e-3)
    # within the clamp the two coincide; the error map is the per-pixel loss
    inside = np.abs(LOGITS) < limit
    assert per_image_loss_of_prob(prob, mask, 3.0, valid=valid * torch.from_numpy(inside)).numpy() == \
        pytest.approx(per_image_loss(logits, mask, 3.0, valid=valid * torch.from_numpy(inside)).numpy(), rel=1e-4)
    error_map = pixel_loss_of_prob(prob, mask, 3.0)
    assert error_map.numpy() == pytest.approx(hand_bce(np.clip(LOGITS, -limit, limit), MASK, 3.0), rel=1e-4)

    # the teacher is trained on exactly this target: a teacher predicting 0 has MSE = mean target^2
    class Zero(nn.Module):
        def forward(self, image, prob, dense=False):
            return torch.zeros_like(prob) if dense else torch.zeros(len(prob))

    image = torch.zeros_like(prob)
    critic = teacher_regression(Zero(), False, image, prob, mask, valid, 3.0)
    assert critic.item() == pytest.approx(np.mean(clamped ** 2), rel=1e-4)
    dense = teacher_regression(Zero(), True, image, prob, mask, valid, 3.0)
    squared = hand_bce(np.clip(LOGITS, -limit, limit), MASK, 3.0) ** 2
    assert dense.item() == pytest.approx(hand_mean(squared, VALID).mean(), rel=1e-4)
    # and the validation BCE pools it over the labelled pixels of whole images
    items = [{"mask": MASK[i, 0].astype(np.uint8), "valid": VALID[i, 0].astype(np.uint8)} for i in range(2)]
    sums = probability_sums(items, [prob[i, 0].numpy() for i in range(2)], 0.5, 3.0)
    pixels = hand_bce(np.clip(LOGITS, -limit, limit), MASK, 3.0)[VALID > 0]
    assert sums[0] / sums[2] == pytest.approx(pixels.mean(), rel=1e-4) and sums[2] == VALID.sum()


def test_with_pos_weight_1_the_losses_are_the_plain_bce():
    logits, mask, valid = (torch.from_numpy(a).float() for a in (LOGITS, MASK, VALID))
    prob = torch.sigmoid(logits)
    # the student's loss: plain BCE with logits
    assert per_image_loss(logits, mask, valid=valid).numpy() == \
        pytest.approx(hand_mean(hand_bce(LOGITS, MASK, 1.0), VALID), rel=1e-5)
    # the teacher's target: the BCE of probabilities clamped to [eps, 1 - eps], as before pos_weight
    p = np.clip(1.0 / (1.0 + np.exp(-LOGITS)), PROB_EPS, 1 - PROB_EPS)
    plain = -(MASK * np.log(p) + (1 - MASK) * np.log1p(-p))
    assert per_image_loss_of_prob(prob, mask, valid=valid).numpy() == pytest.approx(hand_mean(plain, VALID), rel=1e-4)
    assert pixel_loss_of_prob(prob, mask).numpy() == pytest.approx(plain, rel=1e-4)
    # a larger pos_weight costs the foreground pixels more
    assert (per_image_loss(logits, mask, 3.0) > per_image_loss(logits, mask)).all()


IGNORE = 65535
# Each loss as a function of the network's logits; MSE as in soft-label distillation.
MASKED_LOSSES = {
    "loss_of_prob": lambda logits, target, valid: per_image_loss_of_prob(torch.sigmoid(logits), target, 2.0,
                                                                          valid=valid),
    "loss": lambda logits, target, valid: per_image_loss(logits, target, 2.0, valid=valid),
    "mse": lambda logits, target, valid: per_image_mse(torch.sigmoid(logits), target, valid=valid),
}


def partially_labelled_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, valid) of two 16x16 instance label images with an unlabelled band (IGNORE)."""
    labels = np.zeros((2, 1, 16, 16), np.uint16)
    labels[:, :, 3:8, 2:12] = 1
    labels[1, :, 10:14, 4:9] = 2
    labels[:, :, :, 10:] = IGNORE
    mask, valid = masks_from_labels(labels, IGNORE)
    return torch.from_numpy(mask).float(), torch.from_numpy(valid).float()


def gradients(loss_fn, target: torch.Tensor, valid: torch.Tensor, change: torch.Tensor):
    """Loss, gradient w.r.t. the logits and parameter gradients of a small seeded conv net
    whose logits get ``change`` added."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    logits = net(torch.randn(2, 1, 16, 16)) + change
    logits.retain_grad()
    loss = loss_fn(logits, target, valid)
    loss.sum().backward()
    return loss.detach(), logits.grad, [p.grad for p in net.parameters()]


@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
def test_pixels_under_the_ignore_value_change_nothing_in_the_gradient(name):
    loss_fn = MASKED_LOSSES[name]
    mask, valid = partially_labelled_batch()
    ignored = valid == 0
    generator = torch.Generator().manual_seed(1)
    loss, grad_logits, grad_params = gradients(loss_fn, mask, valid, torch.zeros(()))
    other_target = torch.where(ignored, torch.rand(mask.shape, generator=generator).round(), mask)
    other_logits = torch.where(ignored, 20 * torch.randn(mask.shape, generator=generator), 0.0)
    assert not torch.equal(other_target, mask)
    for variant in (gradients(loss_fn, other_target, valid, torch.zeros(())),
                    gradients(loss_fn, mask, valid, other_logits)):
        assert torch.equal(variant[0], loss)
        assert torch.equal(variant[1], grad_logits)
        assert all(torch.equal(a, b) for a, b in zip(variant[2], grad_params))
    assert (grad_logits[ignored] == 0).all() and (grad_logits[~ignored] != 0).any()
    # without the valid map the ignored pixels do count
    assert not torch.equal(gradients(loss_fn, other_target, None, torch.zeros(()))[0],
                           gradients(loss_fn, mask, None, torch.zeros(()))[0])


@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
def test_masked_loss_is_the_mean_over_valid_pixels_and_0_without_any(name):
    loss_fn = MASKED_LOSSES[name]
    logits = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    target = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    valid = torch.ones(3, 1, 8, 8)
    valid[1, :, :, :5] = 0
    valid[2] = 0
    loss = loss_fn(logits, target, valid)
    assert torch.allclose(loss[0], loss_fn(logits[:1], target[:1], None)[0])
    pixel_loss = loss_fn(logits[1:2, :, :, 5:], target[1:2, :, :, 5:], None)[0]  # the valid columns alone
    assert torch.allclose(loss[1], pixel_loss)
    assert loss[2] == 0
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[2] == 0).all()


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


def test_error_map_teacher_checkpoint_and_arch_checks(tmp_path):
    arch = {"type": "error_map", "channels": [4, 8], "strides": [2], "num_res_units": 1, "dropout": 0.0,
            "norm": "BATCH"}
    teacher = build_teacher(arch, 32)
    save_model(tmp_path / "map.pth", teacher, "teacher", arch, 32, {"stage": "joint_error_map"})
    rebuilt, payload = load_model(tmp_path / "map.pth", expected_kind="teacher")
    assert type(rebuilt).__name__ == "ErrorMapPredictor" and payload["arch"]["type"] == "error_map"
    image, prob = torch.randn(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    rebuilt.eval()
    assert rebuilt(image, prob).shape == (3,) and rebuilt(image, prob, dense=True).shape == (3, 1, 32, 32)
    torch.save({**torch.load(tmp_path / "map.pth", weights_only=False), "arch": {**arch, "type": "transformer"}},
               tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unknown teacher type 'transformer'"):
        load_model(tmp_path / "bad.pth")
    # a Critic arch written before teachers had types still loads as a Critic
    critic = {"channels": [4, 8], "strides": [2, 2], "num_res_units": 1, "dropout": 0.25, "norm": "BATCH"}
    assert type(build_teacher(critic, 32)).__name__ == "LossPredictor"


def test_pixel_loss_and_kl():
    prob = torch.tensor([[[[0.9, 0.2], [0.5, 1.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    pixel = pixel_loss_of_prob(prob, target, 2.0)
    assert pixel.shape == prob.shape
    assert torch.allclose(pixel.mean(dim=(1, 2, 3)), per_image_loss_of_prob(prob, target, 2.0))
    logits = torch.randn(2, 1, 4, 4)
    same = torch.sigmoid(logits)
    assert torch.allclose(per_image_kl_with_logits(logits, same), torch.zeros(2), atol=1e-5)
    other = torch.rand(2, 1, 4, 4)
    assert (per_image_kl_with_logits(logits, other) > 0).all()
    # KL and BCE differ by the target's entropy: the same gradient for the student
    logits.requires_grad_(True)
    grad_kl = torch.autograd.grad(per_image_kl_with_logits(logits, other).sum(), logits)[0]
    grad_bce = torch.autograd.grad(per_image_loss(logits, other).sum(), logits)[0]
    assert torch.allclose(grad_kl, grad_bce, atol=1e-6)
