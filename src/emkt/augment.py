"""Data augmentation: mask corruptions for the teacher, geometric/intensity augmentation for training.

The teacher (a MONAI ``Critic``) learns to predict the per-image BCE of a soft mask against
the ground truth from ``(image, mask)``. Its training masks are corrupted ground-truth masks,
produced here by :class:`MaskCorruptor`. The corruptions are mixed so that the BCE targets span
the whole range, from a perfect mask (BCE ~ 0.001) through plausible student errors (shifted,
eroded, blurred, under-confident masks) to gross failures (empty, full, inverted, unrelated):

* with probability ``p_identity`` the mask is returned untouched;
* otherwise, with probability ``p_severe`` it is replaced by a gross failure;
* otherwise each ordinary corruption is applied independently with its own probability, in
  the order morphology -> dropout -> false positives -> shift -> elastic -> blur -> soften, so
  several can combine (if none fires the mask comes back unchanged).

Everything is drawn from the corruptor's own ``numpy.random.Generator`` and from MONAI
transforms seeded from it (``set_random_state``), so a corruptor built with the same seed
produces the same sequence of outputs regardless of global RNG state.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    GaussianSmooth,
    RandAdjustContrast,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
    Rand2DElastic,
    RandAffine,
    RandCoarseDropout,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Randomizable,
    ToTensord,
)
from scipy import ndimage

from .runtime import numpy_random_state, set_numpy_random_state

__all__ = [
    "CORRUPTION_KEYS_DOC",
    "DEFAULT_CORRUPTION",
    "MaskCorruptor",
    "StrongAugmentation",
    "apply_geometry",
    "train_augmentation",
]

# Plain JSON types only: these live in the workflow's YAML config.
DEFAULT_CORRUPTION: dict[str, Any] = {
    "p_identity": 0.1,
    "p_severe": 0.1,
    "p_dropout": 0.3,
    "p_elastic": 0.3,
    "p_shift": 0.3,
    "p_morphology": 0.4,
    "p_false_positives": 0.3,
    "p_blur": 0.4,
    "p_soften": 0.2,
    "max_shift_fraction": 0.15,
    "max_morph_radius": 5,
    "max_blur_sigma": 3.0,
    "max_dropout_holes": 6,
    "max_dropout_size_fraction": 0.25,
    "max_false_positive_blobs": 6,
    "elastic_magnitude": [1.0, 4.0],
    "elastic_spacing_fraction": 0.15,
    "min_soften_confidence": 0.2,
}

CORRUPTION_KEYS_DOC: dict[str, str] = {
    "p_identity": "Probability that the mask is returned untouched (target BCE near 0).",
    "p_severe": "Probability of a gross failure instead: empty, full, inverted, or random blobs unrelated to the GT.",
    "p_dropout": "Probability of erasing random rectangles of the mask (MONAI RandCoarseDropout).",
    "p_elastic": "Probability of an elastic deformation of the mask (MONAI Rand2DElastic).",
    "p_shift": "Probability of translating the mask (MONAI RandAffine, zero padding).",
    "p_morphology": "Probability of an erosion or dilation (50/50) with a disk of random radius.",
    "p_false_positives": "Probability of adding random filled ellipses (false-positive blobs).",
    "p_blur": "Probability of a Gaussian blur giving soft edges (MONAI GaussianSmooth).",
    "p_soften": "Probability of pulling the whole mask towards 0.5 (an under-confident prediction).",
    "max_shift_fraction": "Largest translation per axis, as a fraction of the image side (uniform in [-max, max]).",
    "max_morph_radius": "Largest erosion/dilation radius in pixels (radius uniform in 1..max).",
    "max_blur_sigma": "Largest Gaussian blur sigma in pixels (sigma log-uniform in [0.3, max]).",
    "max_dropout_holes": "Largest number of erased rectangles (uniform in 1..max).",
    "max_dropout_size_fraction": "Largest side of an erased rectangle, as a fraction of the image side.",
    "max_false_positive_blobs": "Largest number of false-positive ellipses (uniform in 1..max).",
    "elastic_magnitude": "[min, max] elastic displacement magnitude in pixels at the control points.",
    "elastic_spacing_fraction": "Spacing of the elastic control grid, as a fraction of the image side.",
    "min_soften_confidence": "Softening maps m to 0.5 + c*(m - 0.5) with c uniform in [min, 0.99].",
}

_PROBABILITY_KEYS = (
    "p_identity",
    "p_severe",
    "p_dropout",
    "p_elastic",
    "p_shift",
    "p_morphology",
    "p_false_positives",
    "p_blur",
    "p_soften",
)


def _validate(settings: dict[str, Any]) -> dict[str, Any]:
    merged = dict(DEFAULT_CORRUPTION)
    for key, value in settings.items():
        if key not in DEFAULT_CORRUPTION:
            raise ValueError(
                f"unknown corruption setting {key!r}; allowed keys: {sorted(DEFAULT_CORRUPTION)}"
            )
        merged[key] = value
    for key in _PROBABILITY_KEYS:
        p = float(merged[key])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"corruption setting {key!r} must be a probability in [0, 1], got {p}")
        merged[key] = p
    for key in ("max_shift_fraction", "max_blur_sigma", "max_dropout_size_fraction", "elastic_spacing_fraction"):
        merged[key] = float(merged[key])
        if merged[key] <= 0:
            raise ValueError(f"corruption setting {key!r} must be > 0, got {merged[key]}")
    for key in ("max_morph_radius", "max_dropout_holes", "max_false_positive_blobs"):
        merged[key] = int(merged[key])
        if merged[key] < 1:
            raise ValueError(f"corruption setting {key!r} must be >= 1, got {merged[key]}")
    mag = merged["elastic_magnitude"]
    if not (isinstance(mag, (list, tuple)) and len(mag) == 2 and 0 <= float(mag[0]) <= float(mag[1])):
        raise ValueError(f"corruption setting 'elastic_magnitude' must be [min, max] with 0 <= min <= max, got {mag!r}")
    merged["elastic_magnitude"] = [float(mag[0]), float(mag[1])]
    c = float(merged["min_soften_confidence"])
    if not 0.0 <= c <= 0.99:
        raise ValueError(f"corruption setting 'min_soften_confidence' must be in [0, 0.99], got {c}")
    merged["min_soften_confidence"] = c
    return merged


@contextmanager
def _torch_single_thread():
    """Run torch ops on one intra-op thread, restoring the previous setting afterwards.

    Every op here works on one small (1, H, W) mask; with several intra-op threads and a busy
    CPU (other Snakemake jobs, data loading), the thread synchronisation alone made a
    16 x 224 x 224 batch ~25x slower (1.5 s instead of 0.05 s) on the 2-core dev machine.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Strip MONAI's MetaTensor wrapper (if any) and return a plain float32 tensor."""
    if hasattr(t, "as_tensor"):
        t = t.as_tensor()
    return torch.as_tensor(t, dtype=torch.float32)


def _randomizables(transform: Randomizable) -> list[Randomizable]:
    """A MONAI transform and the randomised parts it holds (e.g. RandAffine's grid), in a
    fixed order: each draws from its own generator ``R``."""
    return [transform, *(part for part in vars(transform).values() if isinstance(part, Randomizable))]


class MaskCorruptor:
    """Corrupts binary ground-truth masks into soft masks of widely varying quality.

    ``settings`` override :data:`DEFAULT_CORRUPTION` (unknown keys raise ``ValueError``).
    Call on one mask ``(1, H, W)`` or use :meth:`corrupt_batch` on ``(B, 1, H, W)``; outputs
    are float32 in ``[0, 1]`` on the input's device. Deterministic given ``seed``.

    The work is done on the CPU, one mask at a time, with torch temporarily limited to one
    intra-op thread (restored afterwards). Not thread-safe: use one corruptor per worker.
    """

    def __init__(self, settings: dict | None = None, seed: int = 0) -> None:
        self.settings = _validate(dict(settings or {}))
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        # Shape-dependent MONAI transforms, created lazily per (H, W) and seeded from self.rng.
        self._transforms: dict[tuple[int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ public API
    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.ndim != 3 or mask.shape[0] != 1:
            raise ValueError(f"expected one mask of shape (1, H, W), got {tuple(mask.shape)}")
        device = mask.device
        m = _plain(mask.detach().to("cpu"))
        with _torch_single_thread():
            out = self._corrupt(m)
        return out.clamp_(0.0, 1.0).to(device=device, dtype=torch.float32)

    def corrupt_batch(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"expected masks of shape (B, 1, H, W), got {tuple(masks.shape)}")
        if masks.shape[0] == 0:
            return _plain(masks).clone()
        cpu = _plain(masks.detach().to("cpu"))
        with _torch_single_thread():
            out = torch.stack([self._corrupt(m).clamp_(0.0, 1.0) for m in cpu])
        return out.to(device=masks.device, dtype=torch.float32)

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict:
        """Where the random streams stand, as tensors and plain values (a training state holding
        it loads with weights_only): the generator and, per mask shape, the generators of the
        MONAI transforms (each transform and the grids inside it keep one)."""
        return {"seed": self.seed, "rng": self.rng.bit_generator.state,
                "transforms": [[h, w, {name: [numpy_random_state(r.R) for r in _randomizables(t)]
                                       for name, t in transforms.items()}]
                               for (h, w), transforms in self._transforms.items()]}

    def load_state_dict(self, state: dict) -> None:
        """Continue the streams of ``state_dict``: the transforms are rebuilt per shape (in the
        order they were made), their generators set, then the corruptor's own generator."""
        self.seed, self._transforms = int(state["seed"]), {}
        for h, w, saved in state["transforms"]:
            for name, transform in self._get_transforms(h, w).items():
                for randomizable, random_state in zip(_randomizables(transform), saved[name], strict=True):
                    set_numpy_random_state(randomizable.R, random_state)
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ internals
    def _child_seed(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))

    def _get_transforms(self, h: int, w: int) -> dict[str, Any]:
        key = (h, w)
        if key not in self._transforms:
            s = self.settings
            side = min(h, w)
            hole_max = max(2, int(round(s["max_dropout_size_fraction"] * side)))
            hole_min = max(1, hole_max // 4)
            dropout = RandCoarseDropout(
                holes=1,
                max_holes=s["max_dropout_holes"],
                spatial_size=hole_min,
                max_spatial_size=hole_max,
                fill_value=0.0,
                prob=1.0,
            )
            shift = RandAffine(
                prob=1.0,
                translate_range=(s["max_shift_fraction"] * h, s["max_shift_fraction"] * w),
                mode="bilinear",
                padding_mode="zeros",
            )
            spacing = max(2.0, s["elastic_spacing_fraction"] * side)
            elastic = Rand2DElastic(
                spacing=(spacing, spacing),
                magnitude_range=tuple(s["elastic_magnitude"]),
                prob=1.0,
                mode="bilinear",
                padding_mode="zeros",
            )
            for t in (dropout, shift, elastic):
                t.set_random_state(seed=self._child_seed())
            self._transforms[key] = {"dropout": dropout, "shift": shift, "elastic": elastic}
        return self._transforms[key]

    def _corrupt(self, m: torch.Tensor) -> torch.Tensor:
        """``m``: plain CPU float32 ``(1, H, W)``. Returns a new tensor (never aliases ``m``)."""
        s = self.settings
        rng = self.rng
        if rng.random() < s["p_identity"]:
            return m.clone()
        if rng.random() < s["p_severe"]:
            return self._severe(m)

        out = m.clone()
        h, w = out.shape[-2:]
        if rng.random() < s["p_morphology"]:
            out = self._morphology(out)
        if rng.random() < s["p_dropout"]:
            out = self._dropout(out)
        if rng.random() < s["p_false_positives"]:
            n = int(rng.integers(1, s["max_false_positive_blobs"] + 1))
            blobs = self._ellipses(h, w, n, max_axis_fraction=0.12, avoid=out[0] > 0.5)
            out = torch.maximum(out, blobs)
        if rng.random() < s["p_shift"]:
            out = _plain(self._get_transforms(h, w)["shift"](out))
        if rng.random() < s["p_elastic"]:
            out = _plain(self._get_transforms(h, w)["elastic"](out))
        if rng.random() < s["p_blur"]:
            # Log-uniform: small sigmas (slightly soft edges, near-perfect masks) are as common
            # as heavy blurs.
            lo = min(0.3, s["max_blur_sigma"])
            sigma = float(np.exp(rng.uniform(np.log(lo), np.log(s["max_blur_sigma"]))))
            out = _plain(GaussianSmooth(sigma=sigma)(out))
        if rng.random() < s["p_soften"]:
            c = float(rng.uniform(s["min_soften_confidence"], 0.99))
            out = 0.5 + c * (out.clamp(0.0, 1.0) - 0.5)
        return out

    def _dropout(self, m: torch.Tensor, attempts: int = 4) -> torch.Tensor:
        """Random erasing (RandCoarseDropout, fill 0). Holes placed only on background change
        nothing, so a few fresh draws are tried before giving up (all from the seeded RNG)."""
        dropout = self._get_transforms(*m.shape[-2:])["dropout"]
        out = m
        for _ in range(attempts):
            # RandCoarseDropout writes into its input: it gets a private copy.
            out = _plain(dropout(m.clone()))
            if not torch.equal(out, m):
                break
        return out

    def _severe(self, m: torch.Tensor) -> torch.Tensor:
        kind = int(self.rng.integers(0, 4))
        if kind == 0:  # empty: missed everything
            return torch.zeros_like(m)
        if kind == 1:  # full: everything foreground
            return torch.ones_like(m)
        if kind == 2:  # inverted
            return 1.0 - m
        h, w = m.shape[-2:]  # random blobs unrelated to the GT
        n = int(self.rng.integers(2, 2 * self.settings["max_false_positive_blobs"] + 1))
        return self._ellipses(h, w, n, max_axis_fraction=0.2)

    def _morphology(self, m: torch.Tensor) -> torch.Tensor:
        radius = int(self.rng.integers(1, self.settings["max_morph_radius"] + 1))
        binary = m[0].numpy() > 0.5
        # Euclidean distance transform == erosion/dilation by a disk of that radius, and its
        # cost does not grow with the radius.
        if self.rng.random() < 0.5:
            if not binary.any():
                return m.clone()
            out = ndimage.distance_transform_edt(binary) > radius  # erosion
        else:
            if binary.all():
                return m.clone()
            out = ndimage.distance_transform_edt(~binary) <= radius  # dilation
        return torch.from_numpy(out.astype(np.float32))[None]

    def _ellipses(
        self, h: int, w: int, n: int, max_axis_fraction: float, avoid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n`` random filled, rotated ellipses as a (1, H, W) float32 mask.

        With ``avoid`` (an (H, W) bool mask), the centres are drawn among the pixels outside it,
        so each ellipse really adds foreground (a false positive)."""
        rng = self.rng
        side = min(h, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = np.zeros((h, w), dtype=bool)
        lo = max(1.5, 0.03 * side)
        hi = max(lo + 0.5, max_axis_fraction * side)
        free = None
        if avoid is not None:
            free = np.flatnonzero(~avoid.numpy().reshape(-1))
            if free.size == 0:
                free = None
        for _ in range(n):
            if free is None:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            else:
                cy, cx = divmod(int(free[rng.integers(0, free.size)]), w)
                cy, cx = float(cy), float(cx)
            a, b = rng.uniform(lo, hi, size=2)
            theta = rng.uniform(0, math.pi)
            ct, st = math.cos(theta), math.sin(theta)
            dy, dx = yy - cy, xx - cx
            u = dx * ct + dy * st
            v = -dx * st + dy * ct
            out |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
        return torch.from_numpy(out.astype(np.float32))[None]


def train_augmentation(seed: int, intensity: bool = True, keys: tuple[str, ...] = ("image", "mask")) -> Compose:
    """Training augmentation for dict samples ``{"image": (1,H,W), "mask": (1,H,W)}``.

    ``keys`` are the entries moved by the geometric transforms; unlabelled samples pass
    ``("image",)``, partially labelled ones ``("image", "mask", "valid")`` so that the map of
    labelled pixels moves with the mask. The intensity changes always act on ``"image"`` alone.

    Flips along both spatial axes and 90-degree rotations are applied identically to image and
    mask; mild intensity changes (scale +-10 %, shift +-0.1, Gaussian noise std <= 0.05; the
    images are z-scored) touch the image only and can be switched off with
    ``intensity=False``. Other keys pass through untouched. A final ``ToTensord(...,
    track_meta=False)`` turns MONAI's MetaTensors back into plain float32 ``torch.Tensor`` s.
    Deterministic via ``Compose.set_random_state(seed)``.
    """
    keys = list(keys)
    transforms: list = [
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)),
    ]
    if intensity:
        transforms += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandGaussianNoised(keys="image", prob=0.3, mean=0.0, std=0.05),
        ]
    transforms.append(ToTensord(keys=keys, dtype=torch.float32, track_meta=False))
    compose = Compose(transforms)
    compose.set_random_state(seed=int(seed))
    return compose


def apply_geometry(batch: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
    """Each image of a (B, C, H, W) batch flipped left-right where ``geometry[i, 1]`` is 1,
    then rotated by ``geometry[i, 0]`` quarter turns: the dihedral moves of square crops,
    exact on pixels (no interpolation), so a target moved this way matches a moved input."""
    moved = []
    for image, (quarter_turns, flip) in zip(batch, geometry.tolist()):
        image = image.flip(-1) if flip else image
        moved.append(torch.rot90(image, int(quarter_turns), dims=(-2, -1)))
    return torch.stack(moved)


class StrongAugmentation:
    """The strong view of consistency training (condition mean_teacher): per image a random
    flip and quarter-turn rotation (returned, so the teacher's target can be moved the same
    way: ``apply_geometry``) and strong MONAI intensity changes of the z-scored grey values:
    gamma contrast, Gaussian blur, scaling, shift and noise (config mean_teacher.strong).

    Deterministic for a seed: every draw comes from its own generator and the MONAI
    transforms seeded from it, whatever the global random state.
    """

    def __init__(self, settings: dict[str, Any], seed: int | tuple[int, ...]) -> None:
        self.rng = np.random.default_rng(seed)
        sigma = tuple(settings["blur_sigma"])
        self.intensity = Compose([
            RandAdjustContrast(prob=0.8, gamma=tuple(settings["gamma"])),
            RandGaussianSmooth(prob=0.5, sigma_x=sigma, sigma_y=sigma),
            RandScaleIntensity(factors=settings["scale"], prob=0.8),
            RandShiftIntensity(offsets=settings["shift"], prob=0.8),
            RandGaussianNoise(prob=0.5, mean=0.0, std=settings["noise_std"]),
        ])
        self.intensity.set_random_state(seed=int(self.rng.integers(2**31)))

    def geometry(self, n: int) -> torch.Tensor:
        """(n, 2) integers: quarter turns (0-3) and a left-right flip (0/1) per image."""
        return torch.from_numpy(np.stack([self.rng.integers(0, 4, n), self.rng.integers(0, 2, n)], axis=1))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(strong view, geometry) of a (B, 1, H, W) batch of weakly augmented images."""
        geometry = self.geometry(len(batch))
        moved = apply_geometry(batch.detach(), geometry)
        with _torch_single_thread():
            strong = torch.stack([_plain(self.intensity(image)).to(image.device) for image in moved])
        return strong.to(batch.dtype), geometry
