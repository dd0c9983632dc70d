"""Tests for emkt.augment: mask corruptions for the teacher and training augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emkt.augment import (
    CORRUPTION_KEYS_DOC,
    DEFAULT_CORRUPTION,
    MaskCorruptor,
    train_augmentation,
)
from emkt.losses import per_image_loss_of_prob

PROB_KEYS = [k for k in DEFAULT_CORRUPTION if k.startswith("p_")]
SINGLE_CORRUPTIONS = [k for k in PROB_KEYS if k not in ("p_identity", "p_severe")]


def realistic_gt(rng: np.random.Generator, size: int = 64) -> torch.Tensor:
    """A few rotated ellipses covering 10-20 % of the image, shape (1, size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    while True:
        m = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = rng.uniform(0.1 * size, 0.9 * size, size=2)
            a, b = rng.uniform(0.05 * size, 0.14 * size, size=2)
            t = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
            v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
            m |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if 0.10 <= m.mean() <= 0.20:
            return torch.from_numpy(m.astype(np.float32))[None]


@pytest.fixture(scope="module")
def gt_batch() -> torch.Tensor:
    rng = np.random.default_rng(123)
    return torch.stack([realistic_gt(rng) for _ in range(300)])


def only(key: str) -> dict:
    settings = {k: 0.0 for k in PROB_KEYS}
    settings[key] = 1.0
    return settings


def test_defaults_are_plain_json_and_documented():
    assert json.loads(json.dumps(DEFAULT_CORRUPTION)) == DEFAULT_CORRUPTION
    assert set(CORRUPTION_KEYS_DOC) == set(DEFAULT_CORRUPTION)
    assert all(isinstance(v, str) and v for v in CORRUPTION_KEYS_DOC.values())


def test_shapes_dtype_range(gt_batch):
    c = MaskCorruptor(seed=0)
    single = c(gt_batch[0])
    assert single.shape == (1, 64, 64) and single.dtype == torch.float32
    assert type(single) is torch.Tensor
    out = c.corrupt_batch(gt_batch[:32])
    assert out.shape == (32, 1, 64, 64) and out.dtype == torch.float32
    assert type(out) is torch.Tensor
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    # Non-square images work too.
    rect = torch.zeros(2, 1, 40, 72)
    rect[:, :, 10:25, 20:50] = 1.0
    assert c.corrupt_batch(rect).shape == (2, 1, 40, 72)


def test_input_not_modified(gt_batch):
    masks = gt_batch[:16].clone()
    MaskCorruptor(only("p_dropout"), seed=0).corrupt_batch(masks)
    MaskCorruptor(seed=1).corrupt_batch(masks)
    assert torch.equal(masks, gt_batch[:16])


def test_deterministic_given_seed(gt_batch):
    masks = gt_batch[:24]
    a, b = MaskCorruptor(seed=7), MaskCorruptor(seed=7)
    torch.manual_seed(0)
    np.random.seed(0)
    out_a = [a.corrupt_batch(masks), a(masks[0])]
    torch.manual_seed(99)  # global RNG state must not matter
    np.random.seed(99)
    out_b = [b.corrupt_batch(masks), b(masks[0])]
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    other = MaskCorruptor(seed=8).corrupt_batch(masks)
    assert not torch.equal(out_a[0], other)


def test_a_restored_corruptor_continues_the_same_stream(gt_batch, tmp_path):
    """state_dict holds tensors and plain values only (it loads with weights_only), and a new
    corruptor given it draws what the original draws next, through the MONAI transforms too."""
    settings = {**{k: 0.0 for k in PROB_KEYS}, "p_shift": 0.7, "p_elastic": 0.7, "p_dropout": 0.7}
    original = MaskCorruptor(settings, seed=5)
    original.corrupt_batch(gt_batch[:6])
    original(gt_batch[0, :, :48, :40])  # a second mask shape: its own transforms
    torch.save(original.state_dict(), tmp_path / "corruptor.pt")
    restored = MaskCorruptor(settings, seed=0)
    restored.load_state_dict(torch.load(tmp_path / "corruptor.pt", weights_only=True))
    for corruptor in (original, restored):
        corruptor.outputs = [corruptor.corrupt_batch(gt_batch[6:12]), corruptor(gt_batch[1, :, :48, :40])]
    assert all(torch.equal(a, b) for a, b in zip(original.outputs, restored.outputs))
    assert not torch.equal(original.outputs[0], MaskCorruptor(settings, seed=5).corrupt_batch(gt_batch[6:12]))


def test_identity_returns_mask_exactly(gt_batch):
    c = MaskCorruptor({"p_identity": 1.0}, seed=0)
    masks = gt_batch[:8]
    assert torch.equal(c.corrupt_batch(masks), masks)
    assert torch.equal(c(masks[0]), masks[0])


@pytest.mark.parametrize("key", SINGLE_CORRUPTIONS + ["p_severe"])
def test_each_corruption_alone_changes_mask(gt_batch, key):
    masks = gt_batch[:12]
    out = MaskCorruptor(only(key), seed=3).corrupt_batch(masks)
    changed = (out - masks).abs().flatten(1).amax(dim=1) > 1e-3
    # Random erasing can, rarely, miss all foreground; everything else always changes the mask.
    assert changed.sum() >= (10 if key == "p_dropout" else 12), key
    assert (per_image_loss_of_prob(out, masks) > per_image_loss_of_prob(masks, masks)).sum() >= 10


def test_thread_setting_restored(gt_batch):
    before = torch.get_num_threads()
    MaskCorruptor(seed=0).corrupt_batch(gt_batch[:4])
    assert torch.get_num_threads() == before


def test_unknown_key_raises():
    with pytest.raises(ValueError, match="p_teleport") as err:
        MaskCorruptor({"p_teleport": 0.5})
    assert "p_identity" in str(err.value)  # lists the allowed keys
    with pytest.raises(ValueError, match="p_blur"):
        MaskCorruptor({"p_blur": 1.5})


def test_wrong_shape_raises():
    c = MaskCorruptor()
    with pytest.raises(ValueError):
        c(torch.zeros(64, 64))
    with pytest.raises(ValueError):
        c.corrupt_batch(torch.zeros(2, 64, 64))


def test_bce_targets_cover_the_range(gt_batch):
    out = MaskCorruptor(seed=0).corrupt_batch(gt_batch)
    bce = per_image_loss_of_prob(out, gt_batch).numpy()
    assert (bce < 0.05).mean() >= 0.10
    assert (bce > 1.0).mean() >= 0.10
    # Spread: 8 equal-width bins over [0, 2] (larger values clipped into the last bin). Bins up
    # to the max are a poor measure here: full / inverted masks sit at ~5.9 / ~6.9 and leave
    # the bins between ~3.5 and ~5.5 empty by construction.
    hist, _ = np.histogram(np.clip(bce, 0.0, 2.0), bins=8, range=(0.0, 2.0))
    assert (hist >= 3).sum() >= 6, hist
    q10, q25, q50, q75, q90 = np.quantile(bce, [0.1, 0.25, 0.5, 0.75, 0.9])
    assert q10 < 0.05 and 0.05 < q25 < q50 < q75 < 1.0 < q90
    # The plausible-student middle is populated too, not only the two extremes.
    assert ((bce > 0.1) & (bce < 1.0)).mean() >= 0.3
    assert len(np.unique(np.round(bce, 3))) >= 100


def _sample(seed: int):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 32, 48, generator=g)
    image[:, :5, :7] += 10.0  # an asymmetric marker so that every flip/rotation is visible
    mask = (image > 0).float()
    return {"image": image, "mask": mask, "name": "sample"}


@pytest.mark.parametrize("seed", range(6))
def test_train_augmentation_moves_image_and_mask_together(seed):
    aug = train_augmentation(seed, intensity=False)
    sample = _sample(seed)
    for _ in range(4):
        out = aug(dict(sample))
        assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
        assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.float32
        assert torch.equal(out["mask"], (out["image"] > 0).float())
        assert out["name"] == "sample"


def test_train_augmentation_intensity_touches_image_only():
    sample = _sample(0)
    sample["image"] = torch.where(sample["mask"] > 0, 2.0, -2.0)  # well-separated levels
    aug = train_augmentation(0)
    geometries, intensity_changed = set(), False
    for _ in range(40):
        out = aug(dict(sample))
        assert set(torch.unique(out["mask"]).tolist()) <= {0.0, 1.0}
        assert torch.equal(out["mask"], (out["image"] > 0).float())
        levels = out["image"][out["mask"] > 0]
        intensity_changed |= not torch.allclose(levels, torch.full_like(levels, 2.0))
        geometries.add(out["mask"].numpy().tobytes())
    assert intensity_changed
    assert len(geometries) >= 4  # flips and rotations actually happen


def test_train_augmentation_deterministic():
    sample = _sample(1)
    a, b = train_augmentation(5), train_augmentation(5)
    for _ in range(5):
        oa, ob = a(dict(sample)), b(dict(sample))
        assert torch.equal(oa["image"], ob["image"]) and torch.equal(oa["mask"], ob["mask"])
