"""Deterministic generator of EM-like demo data, laid out like the CEM-MitoLab archive.

Labelled set::

    root/<source>/images/<name>.tiff   uint8, 2D
    root/<source>/masks/<name>.tiff    uint16 instance labels (0 = background, 1..N)

Unlabelled pool::

    root/<source>/<name>.tiff          uint8, 2D

Each image comes from its own ``np.random.default_rng`` seeded with
``(seed, kind, source index, image index)``, so an image's bytes never depend on how many
other images are generated. All geometry is in pixels (a fixed "EM pixel size"): larger
images hold more objects, not larger ones.

The content is built so that a global intensity threshold cannot segment it: the
mitochondrial matrix shares its grey range with dense vesicles and lysosome-like bodies,
their membranes with ER and cell membranes, and the cytoplasm has large-scale shading.
What separates mitochondria is shape (elongated, bent capsules) and texture (double
membrane, cristae stripes across the long axis).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.special import expit

# Stream ids mixed into the seed so the labelled set and the pool never share images.
_KIND_LABELLED = 0
_KIND_POOL = 1

# Smallest visible area (pixels) of an instance: slivers cut off by the border are
# rejected, so every label id marks a recognisable object.
_MIN_INSTANCE_AREA = 20


@dataclass(frozen=True)
class SourceStyle:
    """Acquisition style of one source (microscope / sample prep)."""

    contrast: float = 1.0  # gain around mid-grey
    brightness: float = 0.0  # offset added after the gain (image range is [0, 1])
    noise: float = 0.04  # std of additive Gaussian (read-out) noise
    photons: float = 80.0  # Poisson scale: lower means more shot noise
    blur_sigma: float = 0.6  # point-spread blur, pixels
    texture_scale: float = 1.0  # scale of the cytoplasm texture


# Fixed styles for the first sources; later ones are derived deterministically.
STYLES: tuple[SourceStyle, ...] = (
    SourceStyle(contrast=1.0, brightness=0.0, noise=0.03, photons=120.0, blur_sigma=0.5, texture_scale=1.0),
    SourceStyle(contrast=0.85, brightness=0.06, noise=0.03, photons=150.0, blur_sigma=0.6, texture_scale=1.0),
    SourceStyle(contrast=1.25, brightness=-0.06, noise=0.02, photons=200.0, blur_sigma=0.4, texture_scale=0.7),
    SourceStyle(contrast=0.9, brightness=-0.05, noise=0.04, photons=90.0, blur_sigma=1.0, texture_scale=1.2),
)


def source_style(index: int) -> SourceStyle:
    """Style of source ``index``: the fixed ``STYLES`` first, then seeded random ones."""
    if index < len(STYLES):
        return STYLES[index]
    rng = np.random.default_rng([index, 7919])
    return SourceStyle(
        contrast=float(rng.uniform(0.8, 1.3)),
        brightness=float(rng.uniform(-0.1, 0.1)),
        noise=float(rng.uniform(0.02, 0.045)),
        photons=float(rng.uniform(80.0, 200.0)),
        blur_sigma=float(rng.uniform(0.4, 1.1)),
        texture_scale=float(rng.uniform(0.7, 1.5)),
    )


def source_name(prefix: str, index: int) -> str:
    """``synth_a``, ..., ``synth_z``, ``synth_ba``, ... (base-26 letters)."""
    letters = string.ascii_lowercase
    s = letters[index % 26]
    index //= 26
    while index:
        s = letters[index % 26] + s
        index //= 26
    return f"{prefix}_{s}"


# ----------------------------------------------------------------------------- geometry


def _bbox(cy: float, cx: float, extent: float, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """Pixel window around a centre; None when it misses the image entirely."""
    y0, y1 = max(int(np.floor(cy - extent)), 0), min(int(np.ceil(cy + extent)) + 1, shape[0])
    x0, x1 = max(int(np.floor(cx - extent)), 0), min(int(np.ceil(cx + extent)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _capsule(
    win: tuple[slice, slice], cy: float, cx: float, theta: float, half_len: float, radius: float, bend: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate signed distance to a bent capsule, and its local (u, v) coordinates.

    ``u`` runs along the axis, ``v`` across it; the axis is the parabola v = bend * u^2
    over |u| <= half_len. Returns (d, u, v_rel) with d < 0 inside, in pixels.
    """
    ys = np.arange(win[0].start, win[0].stop, dtype=np.float32)[:, None] - cy
    xs = np.arange(win[1].start, win[1].stop, dtype=np.float32)[None, :] - cx
    c, s = np.cos(theta), np.sin(theta)
    u = xs * c + ys * s
    v = ys * c - xs * s
    uc = np.clip(u, -half_len, half_len)
    v_rel = v - bend * uc * uc
    du = np.abs(u) - uc * np.sign(u)  # distance beyond the segment end, 0 along it
    d = np.sqrt(du * du + v_rel * v_rel) - radius
    return d, u, v_rel


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-std Gaussian-smoothed white noise (the cytoplasm texture at one scale)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return n / (n.std() + 1e-6)


def _blend(img: np.ndarray, win: tuple[slice, slice], value, alpha: np.ndarray) -> None:
    """Alpha-composite ``value`` over ``img[win]`` in place."""
    sub = img[win]
    sub += alpha * (value - sub)


# ----------------------------------------------------------------------------- rendering


def render_em_image(
    rng: np.random.Generator, shape: tuple[int, int], style: SourceStyle
) -> tuple[np.ndarray, np.ndarray]:
    """Render one EM-like image and its mitochondria instance labels.

    Returns ``(image uint8, labels uint16)``, both of ``shape``; labels are 1..N, one id per
    mitochondrion, 0 elsewhere (vesicles, ER, membranes and dense bodies stay 0).
    """
    h, w = shape
    area = h * w
    # Intensities are built in [0, 1] "brightness" (1 = electron-lucent, 0 = dense).
    ts = style.texture_scale
    fine = _smooth_noise(rng, shape, 0.8)
    mid = _smooth_noise(rng, shape, 2.5 * ts)
    # Capped so that large images stay cheap (and the shading keeps a physical scale).
    shading = _smooth_noise(rng, shape, min(0.3 * max(h, w), 32.0))
    # Large-scale shading of ~±0.08 moves the cytoplasm into the matrix's grey range in
    # places, one of the things that defeats a global threshold.
    img = 0.64 + 0.08 * shading + 0.05 * mid + 0.03 * fine

    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]

    # Cell membranes: smooth dark curves (open sinusoids or perturbed circles), with a
    # denser cytoplasm on one side.
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.5:
            th = rng.uniform(0, np.pi)
            amp, freq, ph = rng.uniform(2, 10), rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
            py, px = rng.uniform(0, h), rng.uniform(0, w)
            u = (xx - px) * np.cos(th) + (yy - py) * np.sin(th)
            v = (yy - py) * np.cos(th) - (xx - px) * np.sin(th)
            f = (u - amp * np.sin(freq * v + ph)) / np.sqrt(1 + (amp * freq) ** 2 * np.cos(freq * v + ph) ** 2)
        else:
            radius = rng.uniform(0.4, 0.9) * max(h, w)
            ang = rng.uniform(0, 2 * np.pi)
            py, px = h / 2 + radius * np.sin(ang) * 0.9, w / 2 + radius * np.cos(ang) * 0.9
            rho = np.hypot(yy - py, xx - px)
            phi = np.arctan2(yy - py, xx - px)
            k, a, ph = int(rng.integers(2, 5)), rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
            f = rho - radius * (1 + a * np.sin(k * phi + ph))
        thick = rng.uniform(0.8, 1.5)
        img += rng.uniform(-0.06, 0.06) * expit(f / 2.0)
        img += np.exp(-0.5 * (f / thick) ** 2) * (0.18 - img) * 0.8

    labels = np.zeros(shape, dtype=np.uint16)
    occupied = np.zeros(shape, dtype=bool)  # mitochondria plus a margin: distractors keep out

    # Mitochondria, added until a per-image target foreground fraction is reached.
    target = rng.uniform(0.09, 0.22)
    n_inst, fg = 0, 0
    for _ in range(int(60 * max(1.0, area / 96.0**2))):  # attempts scale with the area
        if fg >= target * area:
            break
        r = rng.uniform(3.5, 7.5)
        half_len = r * rng.uniform(0.9, 2.8)
        bend = rng.uniform(-0.6, 0.6) * r / max(half_len, 1.0) ** 2
        theta = rng.uniform(0, np.pi)
        # Centres may lie just outside the image: some mitochondria touch the border.
        cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        ext = half_len + r + abs(bend) * half_len**2 + 2
        win = _bbox(cy, cx, ext, shape)
        if win is None:
            continue
        d, u, v = _capsule(win, cy, cx, theta, half_len, r, bend)
        inside = d < 0
        n_pix = int(inside.sum())
        if n_pix < _MIN_INSTANCE_AREA or (occupied[win] & (d < 1.5)).any():
            continue
        n_inst += 1
        fg += n_pix
        labels[win][inside] = n_inst
        occupied[win] |= d < 3.0

        matrix = rng.uniform(0.36, 0.52)
        val = matrix + 0.04 * fine[win] + 0.03 * mid[win]
        # Double membrane: two dark rings with a lighter gap between them.
        outer = np.exp(-0.5 * ((d + 0.6) / 0.7) ** 2)
        inner = np.exp(-0.5 * ((d + 2.3) / 0.55) ** 2)
        val = val + 0.08 * np.exp(-0.5 * ((d + 1.4) / 0.5) ** 2)
        val = val + 0.85 * outer * (0.16 - val)
        val = val + 0.6 * inner * (0.2 - val)
        # Cristae: dark stripes across the long axis, slightly wavy, some broken.
        period = rng.uniform(3.5, 6.0)
        wig = rng.uniform(0.3, 1.2) * np.sin(v * rng.uniform(0.3, 0.8) + rng.uniform(0, 2 * np.pi))
        stripes = np.clip((np.cos(2 * np.pi * (u + wig) / period + rng.uniform(0, 2 * np.pi)) - 0.45) / 0.35, 0, 1)
        gaps = np.clip(1.2 + mid[win], 0, 1)
        crista = stripes * gaps * np.clip(-(d + 2.6), 0, 1)
        val = val + 0.8 * crista * (0.2 - val)
        _blend(img, win, val, np.clip(0.5 - d, 0, 1))

    def place_round(r_lo: float, r_hi: float, aspect_hi: float):
        """A free spot (away from mitochondria) for a roundish distractor."""
        for _ in range(8):
            r = rng.uniform(r_lo, r_hi)
            half_len = r * rng.uniform(0.0, aspect_hi - 1.0)
            cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
            win = _bbox(cy, cx, half_len + r + 2, shape)
            if win is None:
                continue
            d, _, _ = _capsule(win, cy, cx, rng.uniform(0, np.pi), half_len, r, 0.0)
            if not (occupied[win] & (d < 1.0)).any():
                return win, d
        return None

    density = area / 96.0**2  # distractor counts scale with the image area

    # Vesicles: dark rim, light or matrix-grey ("dense-core") interior, round.
    for _ in range(int(rng.poisson(7 * density))):
        got = place_round(1.8, 5.0, 1.15)
        if got is None:
            continue
        win, d = got
        core = rng.uniform(0.72, 0.85) if rng.random() < 0.5 else rng.uniform(0.34, 0.52)
        val = core + 0.03 * fine[win]
        val = val + 0.85 * np.exp(-0.5 * ((d + 0.5) / 0.6) ** 2) * (0.18 - val)
        _blend(img, win, val, np.clip(0.5 - d, 0, 1))

    # Lysosome-like dense bodies: matrix-grey, granular, single membrane, round-ish; the
    # main "same intensity, wrong shape and texture" distractor.
    for _ in range(int(rng.poisson(3.5 * density))):
        got = place_round(3.5, 7.0, 1.4)
        if got is None:
            continue
        win, d = got
        val = rng.uniform(0.34, 0.5) + 0.07 * fine[win] + 0.03 * mid[win]
        val = val + 0.7 * np.exp(-0.5 * ((d + 0.5) / 0.7) ** 2) * (0.2 - val)
        _blend(img, win, val, np.clip(0.5 - d, 0, 1))

    # ER: thin dark curves, sometimes as parallel pairs (sheets of rough ER).
    for _ in range(int(rng.poisson(4 * density))):
        r = rng.uniform(0.7, 1.4)
        half_len = rng.uniform(5, 18)
        bend = rng.uniform(-0.03, 0.03)
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        offsets = [0.0, rng.uniform(3.0, 5.0)] if rng.random() < 0.4 else [0.0]
        dark = rng.uniform(0.15, 0.3)
        for off in offsets:
            oy, ox = cy + off * np.cos(theta), cx - off * np.sin(theta)
            win = _bbox(oy, ox, half_len + r + abs(bend) * half_len**2 + 2, shape)
            if win is None:
                continue
            d, _, _ = _capsule(win, oy, ox, theta, half_len, r, bend)
            alpha = np.clip(0.5 - d, 0, 1) * ~occupied[win]
            _blend(img, win, dark, 0.9 * alpha)

    # Granules (ribosomes / glycogen): small dark dots outside mitochondria.
    for _ in range(int(rng.poisson(10 * density))):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.6, 1.4)
        win = _bbox(cy, cx, r + 2, shape)
        if win is None:
            continue
        d, _, _ = _capsule(win, cy, cx, 0.0, 0.0, r, 0.0)
        _blend(img, win, 0.2, 0.8 * np.clip(0.5 - d, 0, 1) * ~occupied[win])

    # Acquisition: blur, gain/offset, shot noise, read-out noise, 8-bit quantisation.
    img = ndi.gaussian_filter(img, style.blur_sigma, mode="reflect")
    img = 0.5 + style.contrast * (img - 0.5) + style.brightness
    img = rng.poisson(np.clip(img, 0, 1) * style.photons) / style.photons
    img = img + rng.normal(0.0, style.noise, shape)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, labels


# ----------------------------------------------------------------------------- writers


def _write_tiff(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No metadata / datetime: the bytes depend only on the pixels.
    tifffile.imwrite(path, array, photometric="minisblack", metadata=None)


def _image_name(index: int) -> str:
    return f"{index:04d}.tiff"


def generate_labelled_set(
    root: Path, n_sources: int, images_per_source: int, image_size: tuple[int, int], seed: int
) -> list[Path]:
    """Write a labelled CEM-MitoLab-like set under ``root``; return the image paths, sorted.

    Layout: ``root/synth_<x>/images/NNNN.tiff`` (uint8) and ``root/synth_<x>/masks/NNNN.tiff``
    (uint16 instance labels), source ``i`` rendered in ``source_style(i)``.
    """
    root = Path(root)
    shape = (int(image_size[0]), int(image_size[1]))
    paths = []
    for s in range(n_sources):
        src = root / source_name("synth", s)
        style = source_style(s)
        for i in range(images_per_source):
            rng = np.random.default_rng([seed, _KIND_LABELLED, s, i])
            image, labels = render_em_image(rng, shape, style)
            _write_tiff(src / "images" / _image_name(i), image)
            _write_tiff(src / "masks" / _image_name(i), labels)
            paths.append(src / "images" / _image_name(i))
    return sorted(paths)


def generate_unlabelled_pool(
    root: Path, n_images: int, image_size: tuple[int, int], seed: int, n_sources: int = 3
) -> list[Path]:
    """Write an unlabelled pool ``root/pool_<x>/NNNN.tiff`` (uint8); return the paths, sorted.

    Image ``j`` goes to source ``j % n_sources`` (style ``source_style(j % n_sources)``, the
    same styles as the labelled set) as number ``j // n_sources``, so growing ``n_images``
    only appends images.
    """
    root = Path(root)
    shape = (int(image_size[0]), int(image_size[1]))
    paths = []
    for j in range(n_images):
        s, i = j % n_sources, j // n_sources
        rng = np.random.default_rng([seed, _KIND_POOL, s, i])
        image, _ = render_em_image(rng, shape, source_style(s))
        path = root / source_name("pool", s) / _image_name(i)
        _write_tiff(path, image)
        paths.append(path)
    return sorted(paths)
