"""Model checkpoints that carry everything needed to rebuild the model and its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from . import __version__
from .models import EnsembleSegmenter, build_segmenter, build_student, build_teacher
from .files import atomic_path

FORMAT_VERSION = 1
# student: the ViT segmenter; teacher: the loss predictor; segmenter: a MONAI convolutional
# segmenter (config 'segmenters'); ensemble: segmenters averaged (arch lists the members).
KINDS = ("student", "teacher", "segmenter", "ensemble")
# Kinds that map an image to foreground logits: what evaluation and prediction accept.
SEGMENTATION_KINDS = ("student", "segmenter", "ensemble")
NORMALISATION = "per-image z-score of the grey values"


def save_model(path: str | Path, model: nn.Module, kind: str, arch: dict, input_size: int,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``{state_dict, kind, arch, input_size, ...}`` atomically (temp file, then rename).

    In a data-parallel job only rank 0 writes (the ranks hold the same weights)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not distributed.current().main:
        return
    payload = {
        "format_version": FORMAT_VERSION,
        "emkt_version": __version__,
        "kind": kind,
        "arch": dict(arch),
        "input_size": int(input_size),
        "normalisation": NORMALISATION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint and check that it is one this version can rebuild."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
    missing = [k for k in ("format_version", "kind", "arch", "input_size", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks keys {missing}; was it written by emkt?")
    if payload["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload['format_version']} is not {FORMAT_VERSION}")
    return payload


def build_model(kind: str, arch: dict, input_size: int) -> nn.Module:
    """An untrained network of a checkpoint kind and architecture."""
    if kind == "student":
        return build_student(arch, input_size)
    if kind == "teacher":
        return build_teacher(arch, input_size)
    if kind == "segmenter":
        return build_segmenter(arch, input_size)
    if kind == "ensemble":
        return EnsembleSegmenter([build_model(m["kind"], m["arch"], input_size) for m in arch["members"]])
    raise ValueError(f"unknown model kind {kind!r}; allowed: {KINDS}")


def ensemble_arch(checkpoints: list[dict]) -> dict:
    """The ``arch`` of an ensemble checkpoint: its members' kinds and architectures."""
    return {"members": [{"kind": c["kind"], "arch": c["arch"]} for c in checkpoints]}


def load_model(path: str | Path, expected_kind: str | tuple[str, ...] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a network from its checkpoint; returns (model on CPU, checkpoint).

    ``expected_kind`` is a kind or a tuple of accepted kinds (e.g. SEGMENTATION_KINDS).
    """
    payload = load_checkpoint(path)
    accepted = (expected_kind,) if isinstance(expected_kind, str) else expected_kind
    if accepted and payload["kind"] not in accepted:
        raise ValueError(f"{path}: expected a {' or '.join(accepted)} checkpoint, found a {payload['kind']}")
    model = build_model(payload["kind"], payload["arch"], payload["input_size"])
    model.load_state_dict(payload["state_dict"])
    return model, payload
