"""Model checkpoints that carry everything needed to rebuild the model and its inputs."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from . import __version__
from .models import (SEGMENTATION_KINDS, SEGMENTER_TYPES, build_segmentation_network, build_teacher,
                     constructor_keys, student_arch, student_arch_keys, student_type, teacher_class)
from .files import atomic_path

FORMAT_VERSION = 1
# student: a student network (arch 'type': vitautoenc, swinunetr or unet; none: vitautoenc);
# teacher: a loss predictor (arch 'type': critic, vit or error_map; none: critic); segmenter: a MONAI convolutional
# segmenter (config 'segmenters'); ensemble: segmenters averaged (arch lists the members).
KINDS = ("student", "teacher", "segmenter", "ensemble")
NORMALISATION = "per-image z-score of the grey values"
# Keys every checkpoint of FORMAT_VERSION holds (emkt_version and extra are informative only).
REQUIRED_KEYS = ("format_version", "kind", "arch", "input_size", "normalisation", "state_dict")
# A segmenter's arch is its config entry of 'segmenters': 'epochs' is a training setting kept
# with it, 'depth' defaults to 5 levels.
SEGMENTER_ARCH_KEYS = {"required": ("type", "width"), "optional": ("depth", "epochs")}


# Keys of a checkpoint's extra that say which epoch a stage kept (0: its start) and, for a
# stage that fine-tunes a trained network, the condition of that network (e.g. "joint").
KEPT_EPOCH, FINE_TUNED_FROM = "kept_epoch", "fine_tuned_from"


def kept_epoch_extra(kept_epoch: int, fine_tuned_from: str | None = None) -> dict[str, Any]:
    """The checkpoint extra of a stage's kept epoch: ``{"kept_epoch": k}``, plus
    ``"fine_tuned_from": <start's condition>`` when the stage started from a trained network."""
    extra: dict[str, Any] = {KEPT_EPOCH: int(kept_epoch)}
    if fine_tuned_from is not None:
        extra[FINE_TUNED_FROM] = fine_tuned_from
    return extra


def save_model(path: str | Path, model: nn.Module, kind: str, arch: dict, input_size: int,
               extra: dict[str, Any] | None = None) -> None:
    """Write ``{state_dict, kind, arch, input_size, ...}`` atomically (temp file, then rename).

    A student's ``arch`` may be the config section 'student': its flat arch, with the type, is
    kept (emkt.models.student_arch). In a data-parallel job only rank 0 writes (the ranks hold
    the same weights)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "student":
        arch = student_arch(arch)
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
    """Read a checkpoint and check that this version can rebuild it and feed it the inputs it
    was trained on: format, keys, normalisation and architecture (see ``check_checkpoint``)."""
    payload = load_plain(path, "checkpoint")
    check_checkpoint(payload, path)
    return payload


class UnsafeFileError(ValueError):
    """A file would run code or rebuild arbitrary objects when unpickled, so it was not loaded."""


def load_plain(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` of a file that may come from anyone, with weights_only: only tensors and
    plain values (dicts, lists, tuples, numbers, strings, None) are rebuilt, and a pickle that
    would call or rebuild anything else is refused (UnsafeFileError) before any of it runs.
    Any other unreadable file is a ValueError; both name the file on one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # the restricted unpickler met a global (a callable: code it would run); other refusals,
        # e.g. of bytes that are no pickle at all, are an unreadable file
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:  # torch's own text advises weights_only=False: not for files from anyone
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(error), re.DOTALL)
            reason = _one_line(ValueError(detail.group(1))) if detail else "not a pickle of weights"
            raise ValueError(f"{path}: not a readable {what} ({reason})") from None
        raise UnsafeFileError(f"{path}: refused to load: the {what} asks for the global {found.group(1)}, not just "
                              f"weights and plain values (it may run code)") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable {what} ({_one_line(error)})") from error


def check_checkpoint(payload: Any, path: str | Path = "<checkpoint>") -> None:
    """ValueError naming ``path`` and the problem unless ``payload`` is a checkpoint of this
    format with a known kind, this version's normalisation and a complete architecture."""
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an emkt checkpoint (holds a {type(payload).__name__}, not a dict)")
    # The format first: another format may legitimately lack or rename keys.
    if "format_version" in payload and payload["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {payload['format_version']!r} (written by emkt "
                         f"{payload.get('emkt_version', 'unknown')}); this emkt {__version__} reads format "
                         f"{FORMAT_VERSION} only")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks keys {missing}; was it written by emkt?")
    if payload["kind"] not in KINDS:
        raise ValueError(f"{path}: unknown model kind {payload['kind']!r}; allowed: {KINDS}")
    size = payload["input_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{path}: input_size must be a positive integer, got {size!r}")
    check_normalisation(payload, path)
    check_arch(payload["kind"], payload["arch"], path)


def check_normalisation(payload: dict, path: str | Path = "<checkpoint>") -> None:
    """A model sees inputs normalised as in its training, or its predictions mean nothing:
    ValueError unless the checkpoint's normalisation is the one this version applies."""
    found = payload.get("normalisation")
    if found != NORMALISATION:
        raise ValueError(f"{path}: the model was trained on inputs normalised as {found!r}, but this emkt "
                         f"{__version__} applies {NORMALISATION!r}; its predictions would be wrong")


def arch_keys(kind: str, arch: dict | None = None) -> tuple[set[str], set[str]]:
    """(required, optional) keys of the ``arch`` of a checkpoint kind; for the networks built
    from keyword arguments they are read off the constructor, so they cannot drift from it.
    A student's and a teacher's keys depend on its type (``arch['type']``)."""
    if kind == "segmenter":
        return set(SEGMENTER_ARCH_KEYS["required"]), set(SEGMENTER_ARCH_KEYS["optional"])
    if kind == "ensemble":
        return {"members"}, set()
    if kind == "teacher":
        network = teacher_class(arch or {})
        required, optional = constructor_keys(network)
        return required, optional | {"type"}
    return student_arch_keys(arch or {})


def check_arch(kind: str, arch: Any, path: str | Path = "<checkpoint>") -> None:
    """ValueError naming the file, the kind and the keys when ``arch`` lacks a key its network
    needs or has one it does not know (instead of a TypeError from deep inside MONAI)."""
    if not isinstance(arch, dict):
        raise ValueError(f"{path}: the {kind} arch is a {type(arch).__name__}, not a dict")
    if kind in ("teacher", "student"):
        try:
            teacher_class(arch) if kind == "teacher" else student_type(arch)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    required, optional = arch_keys(kind, arch)
    missing, unknown = sorted(required - set(arch)), sorted(set(arch) - required - optional)
    if missing or unknown:
        problems = ([f"lacks {missing}"] if missing else []) + ([f"has unknown {unknown}"] if unknown else [])
        raise ValueError(f"{path}: the {kind} arch {' and '.join(problems)}; a {kind} arch has "
                         f"{sorted(required)}" + (f" and optionally {sorted(optional)}" if optional else ""))
    if kind == "segmenter" and arch["type"] not in SEGMENTER_TYPES:
        raise ValueError(f"{path}: unknown segmenter type {arch['type']!r}; allowed: {SEGMENTER_TYPES}")
    if kind == "ensemble":
        _check_members(arch["members"], path)


def _check_members(members: Any, path: str | Path) -> None:
    """Each ensemble member is a {kind, arch} of a segmentation network (not an ensemble)."""
    if not isinstance(members, list) or len(members) < 2:
        raise ValueError(f"{path}: an ensemble arch needs a list of at least 2 members, got {members!r}")
    for index, member in enumerate(members):
        if not isinstance(member, dict) or member.get("kind") not in ("student", "segmenter") or "arch" not in member:
            raise ValueError(f"{path}: ensemble member {index} must be {{kind: student or segmenter, arch}}, "
                             f"got {member!r}")
        check_arch(member["kind"], member["arch"], f"{path} (ensemble member {index})")


def _one_line(error: Exception, limit: int = 300) -> str:
    """An error message on one line, cut short: some torch errors span many lines (one per
    mismatched weight), and a report of a bad checkpoint should stay readable."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def build_model(kind: str, arch: dict, input_size: int) -> nn.Module:
    """An untrained network of a checkpoint kind and architecture."""
    if kind == "teacher":
        return build_teacher(arch, input_size)
    if kind in SEGMENTATION_KINDS:
        return build_segmentation_network(kind, arch, input_size)
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
    kind = payload["kind"]
    try:  # values the keys check cannot judge, e.g. a width MONAI rejects
        model = build_model(kind, payload["arch"], payload["input_size"])
    except (TypeError, ValueError, KeyError, AssertionError) as error:
        raise ValueError(f"{path}: cannot build the {kind} from its arch {payload['arch']} and input size "
                         f"{payload['input_size']} ({_one_line(error)})") from error
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: the weights do not fit the {kind} its arch describes "
                         f"({_one_line(error)})") from error
    return model, payload
