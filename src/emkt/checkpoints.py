"""Model checkpoints that carry everything needed to rebuild the model and its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .models import build_student, build_teacher
from .files import atomic_path

FORMAT_VERSION = 1
KINDS = ("student", "teacher")
NORMALISATION = "per-image z-score of the grey values"


def save_model(path: str | Path, model: nn.Module, kind: str, arch: dict, input_size: int,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``{state_dict, kind, arch, input_size, ...}`` atomically (temp file, then rename)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
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


def load_model(path: str | Path, expected_kind: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a student or teacher from its checkpoint; returns (model on CPU, checkpoint)."""
    payload = load_checkpoint(path)
    if expected_kind and payload["kind"] != expected_kind:
        raise ValueError(f"{path}: expected a {expected_kind} checkpoint, found a {payload['kind']}")
    builder = build_student if payload["kind"] == "student" else build_teacher
    model = builder(payload["arch"], payload["input_size"])
    model.load_state_dict(payload["state_dict"])
    return model, payload
