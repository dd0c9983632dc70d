"""Resumable training: everything a stage needs to continue after a kill, saved every epoch.

A state file holds the epoch reached, the per-epoch history rows, the kept (best) epoch and
its weights, the state_dict() of every model, optimiser, scheduler and other stateful object
(the mask corruptor's generators), and the RNG states of torch, numpy and Python. It holds
tensors and plain values only (numpy arrays become tensors), so it loads with
``torch.load(weights_only=True)``: a planted state file cannot run code. Restored at
the start of the next epoch, an interrupted run continues exactly as the uninterrupted one
would have: on CPU with the same seed, the final weights are equal.

The file lives outside the rule's outputs (Snakemake deletes those when a job fails) and
carries a fingerprint of the job's config and inputs, so a stale state from a different
configuration is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .checkpoints import load_plain
from .distributed import current
from .files import atomic_path
from .runtime import numpy_random_state, set_numpy_random_state

log = logging.getLogger(__name__)
# 2: plain values only (format 1 pickled numpy and MONAI objects; it is not loaded, see load)
FORMAT_VERSION = 2
# A test hook: with EMKT_HOLD_AFTER_EPOCH=N in its environment, a job that has saved the state
# of epoch N writes <state>.held (its pid) and waits (HOLD_LIMIT_S at most), so a kill test
# kills it at a known epoch instead of racing the training. Unset, nothing changes.
HOLD_ENV, HOLD_LIMIT_S = "EMKT_HOLD_AFTER_EPOCH", 600.0


def fingerprint(config: dict, inputs: Iterable[str | Path], **identity: Any) -> str:
    """A digest of the config, the input files (path, size, mtime) and e.g. stage and seed."""
    files = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in map(Path, inputs) if p.exists()]
    text = json.dumps({"config": config, "inputs": files, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def plain(value: Any) -> Any:
    """``value`` with numpy arrays as tensors and numpy scalars as Python numbers, through
    dicts, lists and tuples: what ``torch.load(weights_only=True)`` rebuilds without help."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    return value


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": numpy_random_state(np.random.mtrand._rand),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_random_state(np.random.mtrand._rand, state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # a job resumed with fewer (or more) GPUs than it saved with restores what both have
        for device, generator in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, device)


def _capture(obj: Any) -> Any:
    # Modules, optimisers, schedulers, the optimiser update (with its GradScaler) and the
    # corruptor all have state_dict(); pickling an object itself would not load safely.
    if not hasattr(obj, "state_dict"):
        raise TypeError(f"cannot save the training state of a {type(obj).__name__}: it has no state_dict()")
    return plain(obj.state_dict())


def _restore(obj: Any, state: Any) -> None:
    obj.load_state_dict(state)


@dataclass
class Checkpointing:
    """Where a stage keeps its resumable state, and the fingerprint it must match."""

    path: Path
    fingerprint: str

    def save(self, epoch: int, rows: list[dict], selection: tuple[float, int], best_states: dict,
             stateful: dict[str, Any]) -> None:
        state = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "epoch": epoch, "rows": plain(rows),
                 "selection": plain(tuple(selection)), "best_states": best_states,
                 "objects": {name: _capture(obj) for name, obj in stateful.items()}, "rng": capture_rng()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        if os.environ.get(HOLD_ENV) == str(epoch):
            self._hold(epoch)

    @property
    def held_marker(self) -> Path:
        return self.path.with_name(self.path.name + ".held")

    def _hold(self, epoch: int) -> None:
        log.warning("%s=%d: holding after epoch %d until killed (%s)", HOLD_ENV, epoch, epoch, self.held_marker)
        with atomic_path(self.held_marker) as tmp:
            tmp.write_text(f"{os.getpid()}\n")
        end = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < end:
            time.sleep(0.2)

    def load(self, stateful: dict[str, Any]) -> dict | None:
        """Restore ``stateful`` and the RNGs from a matching state file; return the state
        (epoch, rows, selection, best_states) or None when there is nothing to resume."""
        if not self.path.exists():
            return None
        try:
            state = load_plain(self.path, "training state")
        except ValueError as error:  # damaged, planted or of format 1 (UnsafeFileError): never unpickled;
            log.warning("ignoring %s; starting from epoch 1", error)  # it costs the epochs it held
            return None
        if not isinstance(state, dict) or (state.get("format"), state.get("fingerprint")) != (FORMAT_VERSION,
                                                                                               self.fingerprint):
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
            self.held_marker.unlink(missing_ok=True)
