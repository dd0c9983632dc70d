"""Multi-process data-parallel training: the process group, sharding, reductions, launching.

One training job runs as ``world`` processes (``distributed.processes`` per node times
``distributed.nodes``), each on its own GPU (or, on CPU, with the gloo backend). Every
process runs the same stage code: the data order is one global permutation that every
rank draws from the same (seed, epoch), and each rank takes its slice of every global
batch (``global_batch_slices``), so a run with W processes and per-process batch B/W sees
exactly the batches of a 1-process run with batch B. DistributedDataParallel averages the
gradients, so the updates are the same up to float rounding. Validation is split across
ranks and merged (``gather``); only rank 0 writes files.

A job script calls ``relaunch`` first: with more than one process configured and no
process group in the environment, it starts the configured launcher (``torchrun``, or
``srun`` on SLURM; emkt.cluster.launch_command) on the script itself and exits with its
status. Each launched process then finds RANK / WORLD_SIZE (torchrun) or SLURM_PROCID /
SLURM_NTASKS (srun) and joins the group in ``init_process_group``.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from .cluster import environment_rank, first_slurm_host, launch_command

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the job: rank, world size, rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, histories and logs."""
        return self.rank == 0


def current() -> ProcessGroup:
    """The process group this process belongs to (a 1-process group when none is set up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessGroup()
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_process_group(device_choice: str, backend: str = "auto") -> tuple[ProcessGroup, str]:
    """Join the job's process group when launched as one of several processes.

    Returns the group and the device string for this process: ``cuda:<local rank>`` when the
    job runs on GPUs, else the device choice unchanged. ``backend`` 'auto' is NCCL on CUDA
    and gloo on CPU.
    """
    found = environment_rank()
    if found is None or found[1] == 1:
        return ProcessGroup(), device_choice
    rank, world, local_rank = found
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    if "MASTER_ADDR" not in os.environ:  # srun: rank 0's node, agreed through the environment
        os.environ["MASTER_ADDR"] = first_slurm_host()
        os.environ.setdefault("MASTER_PORT", os.environ.get("EMKT_MASTER_PORT", "29500"))
    cuda = device_choice != "cpu" and torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    device = device_choice
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend, rank=rank, world_size=world)
    log.info("process %d of %d (local rank %d), backend %s, device %s", rank, world, local_rank, backend, device)
    return ProcessGroup(rank, world, local_rank), device


def shutdown() -> None:
    """Leave the process group (no barrier: after a failure on another rank it would hang)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- data

def local_batch_size(global_batch: int, world: int) -> int:
    """The per-process batch of a global batch; the config check makes it divide evenly."""
    if global_batch % world:
        raise ValueError(f"train.batch_size {global_batch} is not divisible by the {world} processes "
                         "(distributed.processes x distributed.nodes)")
    return global_batch // world


def global_batch_slices(order: Sequence[int], global_batch: int, group: ProcessGroup) -> list[int]:
    """This rank's indices of a global order, batch by batch.

    Global batch k is ``order[k*G : (k+1)*G]``; rank r takes its r-th slice of B = G / world.
    The order is cut to whole global batches (the last incomplete one is dropped, as in a
    1-process run with drop_last). With fewer items than one global batch, a single process
    keeps them all and several processes repeat the order to fill one batch.
    """
    order = list(order)
    per_rank = local_batch_size(global_batch, group.world)
    if len(order) >= global_batch:
        order = order[: len(order) // global_batch * global_batch]
    elif group.world > 1 and order:
        order = (order * (global_batch // len(order) + 1))[:global_batch]
    else:
        return order
    return [index for start in range(0, len(order), global_batch)
            for index in order[start + group.rank * per_rank: start + (group.rank + 1) * per_rank]]


def shard(items: Sequence, group: ProcessGroup) -> list:
    """Every world-th item from this rank's position: a rank's part of validation images."""
    return list(items[group.rank::group.world])


# ---------------------------------------------------------------- reductions

def gather(value: Any, group: ProcessGroup) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if group.world == 1:
        return [value]
    gathered: list[Any] = [None] * group.world
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(values: dict[str, float], group: ProcessGroup) -> dict[str, float]:
    """Per-key mean of each rank's epoch means (every rank runs the same number of steps)."""
    if group.world == 1:
        return values
    parts = gather(values, group)
    return {key: sum(part[key] for part in parts) / len(parts) for key in values}


# ---------------------------------------------------------------- launching

def relaunch(settings: dict) -> None:
    """Start this script as ``settings['processes'] x settings['nodes']`` processes and exit
    with their status, unless it is one of them already or one process is configured."""
    if settings["processes"] * settings["nodes"] == 1 or environment_rank() is not None:
        return
    command = launch_command(settings, os.path.abspath(sys.argv[0]), sys.argv[1:])
    log.info("launching %d process(es): %s", settings["processes"] * settings["nodes"], shlex.join(command))
    sys.stderr.flush()
    status = subprocess.run(command, stderr=sys.stderr, stdout=sys.stderr).returncode
    raise SystemExit(status)
