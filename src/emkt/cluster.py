"""What a training job asks of the cluster and how its processes are started: the SLURM
resources of a data-parallel job, the launcher command (torchrun or srun) and a launched
process's rank from the launcher's environment.

Imported by the Snakefile, so it depends on nothing heavier than the standard library
(importing torch there would cost every `snakemake` call ~2 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def job_resources(train: dict, settings: dict) -> dict:
    """Snakemake resources of a training job from config resources.train (``train``: gpu per
    process, memory, time) and the config section 'distributed' (``settings``).

    One node with torchrun: one task with gpu x processes GPUs; torchrun starts the
    processes inside it. Otherwise one SLURM task per process: ``mpi`` makes the SLURM plugin
    leave the launching to the job (``relaunch`` calls srun), and the GPUs are asked per node
    (gres), one per task.
    """
    resources = dict(train)
    processes, nodes = settings["processes"], settings["nodes"]
    gpus = resources.pop("gpu", 0) * processes
    if nodes > 1 or (settings["launcher"] == "srun" and processes * nodes > 1):
        resources.update(nodes=nodes, mpi="srun", tasks=processes * nodes)
        if gpus:
            resources.update(gres=f"gpu:{gpus}", tasks_per_gpu=1)
    else:
        resources["gpu"] = gpus
    return resources


def launch_command(settings: dict, script: str, args: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """The command that starts ``script`` (with ``args``) as the configured number of processes.

    ``settings`` is the config section 'distributed'. torchrun on one node runs standalone
    (a local rendezvous); on several nodes srun starts one torchrun per node, meeting at the
    first node. The srun launcher starts every process itself (one task per GPU).
    """
    processes, nodes = settings["processes"], settings["nodes"]
    port = str(settings["port"])
    if settings["launcher"] == "torchrun":
        torchrun = [python, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
        if nodes == 1:
            return [*torchrun, "--standalone", script, *args]
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", *torchrun, f"--nnodes={nodes}",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={first_slurm_host()}:{port}",
                f"--rdzv-id={os.environ.get('SLURM_JOB_ID', 'emkt')}", script, *args]
    return ["srun", f"--nodes={nodes}", f"--ntasks={processes * nodes}", f"--ntasks-per-node={processes}",
            "--export=ALL,EMKT_LAUNCHER=srun,EMKT_MASTER_PORT=" + port, python, script, *args]


def first_slurm_host() -> str:
    """The first host name of the job's node list (where rank 0 runs under srun)."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodes:
        return "127.0.0.1"
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def environment_rank() -> tuple[int, int, int] | None:
    """(rank, world, local rank) from torchrun's or srun's environment, or None outside a launch."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if os.environ.get("EMKT_LAUNCHER") == "srun" and "SLURM_PROCID" in os.environ:
        return (int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]),
                int(os.environ.get("SLURM_LOCALID", 0)))
    return None
