"""Resumable training: everything a stage needs to continue after a kill, saved every epoch.

A state file holds the epoch reached, the per-epoch history rows, the kept (best) epoch and
its weights, the state of every model, optimiser, scheduler and other stateful object (the
mask corruptor's generators), and the RNG states of torch, numpy and Python. Restored at
the start of the next epoch, an interrupted run continues exactly as the uninterrupted one
would have: on CPU with the same seed, the final weights are equal.

The file lives outside the rule's outputs (Snakemake deletes those when a job fails) and
carries a fingerprint of the job's config and inputs, so a stale state from a different
configuration is never resumed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .distributed import current
from .files import atomic_path

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def fingerprint(config: dict, inputs: Iterable[str | Path], **identity: Any) -> str:
    """A digest of the config, the input files (path, size, mtime) and e.g. stage and seed."""
    files = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in map(Path, inputs) if p.exists()]
    text = json.dumps({"config": config, "inputs": files, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # a job resumed with fewer (or more) GPUs than it saved with restores what both have
        for device, generator in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, device)


def _capture(obj: Any) -> Any:
    # Modules, optimisers and schedulers have state_dict(); other objects (the corruptor)
    # are saved as a copy of their attributes.
    return obj.state_dict() if hasattr(obj, "state_dict") else copy.deepcopy(vars(obj))


def _restore(obj: Any, state: Any) -> None:
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    else:
        vars(obj).update(state)


@dataclass
class Checkpointing:
    """Where a stage keeps its resumable state, and the fingerprint it must match."""

    path: Path
    fingerprint: str

    def save(self, epoch: int, rows: list[dict], selection: tuple[float, int], best_states: dict,
             stateful: dict[str, Any]) -> None:
        state = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "epoch": epoch, "rows": rows,
                 "selection": selection, "best_states": best_states,
                 "objects": {name: _capture(obj) for name, obj in stateful.items()}, "rng": capture_rng()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self, stateful: dict[str, Any]) -> dict | None:
        """Restore ``stateful`` and the RNGs from a matching state file; return the state
        (epoch, rows, selection, best_states) or None when there is nothing to resume."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as error:  # a damaged state only costs the epochs it held
            log.warning("ignoring unreadable training state %s (%s); starting from epoch 1", self.path, error)
            return None
        if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring training state %s: it belongs to another config or other inputs", self.path)
            return None
        for name, obj in stateful.items():
            _restore(obj, state["objects"][name])
        restore_rng(state["rng"])
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return state

    def clear(self) -> None:
        """Remove the state once the stage's outputs are written (by rank 0, which wrote them)."""
        if current().main:
            self.path.unlink(missing_ok=True)
