"""Process-level setup: seeds, threads, device choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def numpy_random_state(generator: np.random.RandomState) -> dict:
    """A legacy numpy generator's state as tensors and plain values (the MT19937 key as an
    int64 tensor), so that a training state holding it loads with weights_only."""
    state = generator.get_state(legacy=False)
    return {**state, "state": {**state["state"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64))}}


def set_numpy_random_state(generator: np.random.RandomState, state: dict) -> None:
    """Restore a state from ``numpy_random_state``."""
    key = np.asarray(state["state"]["key"], dtype=np.int64).astype(np.uint32)
    generator.set_state({**state, "state": {**state["state"], "key": key}})


def select_device(choice: str) -> torch.device:
    """'auto' takes CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'device' is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make CPU kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Same seed and config on CPU must give identical metrics; on CUDA this also makes
    # cuDNN pick deterministic algorithms where they exist (warn_only: some have none).
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def set_threads(threads: int) -> None:
    """Use exactly the cores the scheduler gave this job, so parallel jobs do not oversubscribe."""
    torch.set_num_threads(max(1, int(threads)))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
