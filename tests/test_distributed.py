"""Data-parallel training on CPU with the gloo backend, and the speed settings of a step.

The central check: a stage run as 2 processes (per-process batch 2) gives the same weights
and validation values as 1 process with the same global batch (4), and a state saved by the
2-process run resumes in 1 process to the result of an uninterrupted 1-process run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import merged
from emkt.acceleration import Runtime, amp_dtype, is_convolutional
from emkt.config import ConfigError, validate_config
from emkt.cluster import job_resources, launch_command
from emkt.distributed import ProcessGroup, global_batch_slices, local_batch_size
from emkt.models import build_segmenter, build_student, build_teacher, teacher_arch
from emkt.resume import Checkpointing
from emkt.runtime import seed_everything
from emkt.training.loaders import EpochSampler
from emkt.training.supervised import train_student_baseline

CPU = torch.device("cpu")
JOB = Path(__file__).with_name("distributed_job.py")


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("size,batch,world", [(10, 4, 2), (12, 6, 3), (3, 4, 2), (8, 8, 4)])
def test_ranks_split_every_global_batch_of_one_process(size, batch, world):
    order = list(range(100, 100 + size))
    single = global_batch_slices(order, batch, ProcessGroup())
    parts = [global_batch_slices(order, batch, ProcessGroup(rank, world)) for rank in range(world)]
    per_rank = batch // world
    assert len({len(part) for part in parts}) == 1
    steps = len(parts[0]) // per_rank
    rebuilt = [index for step in range(steps) for part in parts for index in part[step * per_rank:(step + 1) * per_rank]]
    if size >= batch:
        assert rebuilt == single  # batch k of 1 process = the ranks' k-th batches, in rank order
    else:  # fewer items than one global batch: one batch, padded by repeating the order
        assert single == order and rebuilt == (order * batch)[:batch]


def test_sampler_length_matches_what_it_yields_on_every_rank():
    for world in (1, 2, 4):
        for rank in range(world):
            sampler = EpochSampler(19, 5, global_batch=8, limit=17, group=ProcessGroup(rank, world))
            assert len(list(sampler)) == len(sampler) == 16 // world


def test_global_batch_must_divide_over_processes(tiny_config):
    with pytest.raises(ValueError, match="not divisible"):
        local_batch_size(8, 3)
    bad = merged(tiny_config, {"distributed": {"processes": 3}})
    with pytest.raises(ConfigError, match=r"'train.batch_size' = 8 must be divisible by .* = 3"):
        validate_config(bad)
    with pytest.raises(ConfigError, match=r"'distributed.launcher' = 'mpirun' is not allowed"):
        validate_config(merged(tiny_config, {"distributed": {"launcher": "mpirun"}}))


def test_launch_commands():
    base = {"processes": 4, "nodes": 1, "launcher": "torchrun", "port": 29555}
    command = launch_command(base, "/job.py", ["a"], python="py")
    assert command == ["py", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone", "/job.py", "a"]
    command = launch_command({**base, "launcher": "srun", "nodes": 2}, "/job.py", python="py")
    assert command[:4] == ["srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]
    assert "EMKT_LAUNCHER=srun" in command[4] and "EMKT_MASTER_PORT=29555" in command[4]
    assert command[-2:] == ["py", "/job.py"]


def test_slurm_resources_of_a_training_job():
    train = {"mem_mb": 1000, "runtime": 60, "gpu": 1}
    one = {"processes": 1, "nodes": 1, "launcher": "torchrun"}
    assert job_resources(train, one) == train
    assert job_resources(train, {**one, "processes": 4}) == {**train, "gpu": 4}  # one task, torchrun inside
    assert job_resources({**train, "gpu": 0}, {**one, "processes": 4}) == {**train, "gpu": 0}
    several = job_resources(train, {**one, "processes": 4, "nodes": 2})
    assert several == {"mem_mb": 1000, "runtime": 60, "nodes": 2, "mpi": "srun", "tasks": 8, "gres": "gpu:4",
                       "tasks_per_gpu": 1}
    assert job_resources(train, {**one, "processes": 2, "launcher": "srun"})["tasks"] == 2
    assert "mpi" not in job_resources(train, {**one, "launcher": "srun"})  # one process: nothing to launch


# ---------------------------------------------------------------- speed settings

def test_amp_is_off_on_cpu_by_default_and_fp16_needs_a_gpu():
    assert amp_dtype("auto", CPU) is None and amp_dtype("off", CPU) is None
    assert amp_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="'train.amp' is 'fp16'"):
        amp_dtype("fp16", CPU)


def test_channels_last_is_for_convolutional_networks(tiny_config):
    assert is_convolutional(build_teacher(teacher_arch(tiny_config, "critic"), 32))
    assert is_convolutional(build_segmenter({"type": "unet", "width": 4, "depth": 3}, 32))
    vit = build_student(tiny_config["student"], 32)
    assert not is_convolutional(vit)
    assert not Runtime(CPU).uses_channels_last(vit) and Runtime(CPU, channels_last=True).uses_channels_last(vit)


def test_bf16_autocast_trains_on_cpu(tiny_config, tiny_data, tmp_path):
    """The mixed-precision path (autocast, float32 losses) runs and learns; CPU bf16 is what
    a CPU can check of the code a GPU runs in bf16."""
    config = merged(tiny_config, {"train": {"amp": "bf16"}, "student_baseline": {"epochs": 1}})
    seed_everything(0)
    train_student_baseline(config, 0, tiny_data, tmp_path / "h.csv", CPU)
    history = pd.read_csv(tmp_path / "h.csv")
    assert history["train_bce"].notna().all() and history["val_iou"].between(0, 1).all()


# ---------------------------------------------------------------- 2 processes vs 1

def run_job(tmp_path: Path, name: str, config: dict, files, stages: list[str], state: Path) -> Path:
    out = tmp_path / name
    out.mkdir()
    job = {"config": config, "files": {k: None if v is None else str(v) for k, v in vars(files).items()},
           "stages": stages, "out": str(out), "state": str(state)}
    (out / "job.json").write_text(json.dumps(job))
    result = subprocess.run([sys.executable, str(JOB), str(out / "job.json")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["objects"]["model:model"]


def assert_close_states(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.workflow
def test_two_gloo_processes_match_one_process_and_resume_in_one(tiny_config, tiny_data, tmp_path):
    # 14 crops per epoch: 3 global batches of 4 (2 per process), the last 2 crops dropped
    config = merged(tiny_config, {"train": {"batch_size": 4}, "loader": {"crops_per_image": 2},
                                  "student_baseline": {"epochs": 1}, "joint": {"epochs": 1},
                                  "teacher_pretrain": {"epochs": 1}})
    torch.set_num_threads(1)
    # one process in this one: epoch 1 (its state kept), then epoch 2 resumed from it
    seed_everything(0)
    reference_state = tmp_path / "reference.pt"
    train_student_baseline(config, 0, tiny_data, tmp_path / "ref.csv", CPU, Checkpointing(reference_state, "test"))
    after_one = model_state(reference_state)
    two_epochs = merged(config, {"student_baseline": {"epochs": 2}})
    seed_everything(0)
    uninterrupted = train_student_baseline(two_epochs, 0, tiny_data, tmp_path / "ref2.csv", CPU)
    reference_history = pd.read_csv(tmp_path / "ref2.csv")

    # two gloo processes through the workflow's launcher (torchrun), batch 2 each
    parallel = merged(config, {"distributed": {"processes": 2}})
    state = tmp_path / "parallel_state.pt"
    out = run_job(tmp_path, "parallel", parallel, tiny_data, ["baseline", "joint"], state)
    assert {p.name for p in out.glob("rank*.done")} == {"rank0.done", "rank1.done"}
    assert (out / "rank1.done").read_text() == "2"
    assert_close_states(model_state(state), after_one)
    history = pd.read_csv(out / "baseline.csv")
    for column in ("train_bce", "val_iou", "val_dice"):
        assert history[column].iloc[0] == pytest.approx(reference_history[column].iloc[0], rel=1e-4, abs=1e-6)
    # the joint stage (the teacher's BatchNorm, a frozen teacher in the student step) ran and
    # reduced its validation over ranks; only rank 0 wrote the files
    joint = pd.read_csv(out / "joint.csv")
    assert joint[["val_iou", "val_teacher_mae"]].notna().all().all()
    assert sorted(p.name for p in out.glob("*.csv")) == ["baseline.csv", "joint.csv", "pretrain.csv"]

    # the 2-process state resumes in 1 process to the uninterrupted 1-process result
    resumed_state = tmp_path / "resumed.pt"
    shutil.copy(state, resumed_state)
    seed_everything(0)
    resumed = train_student_baseline(two_epochs, 0, tiny_data, tmp_path / "resumed.csv", CPU,
                                     Checkpointing(resumed_state, "test"))
    assert_close_states(resumed.state_dict(), uninterrupted.state_dict())
    resumed_history = pd.read_csv(tmp_path / "resumed.csv")
    assert resumed_history["val_iou"].tolist() == pytest.approx(reference_history["val_iou"].tolist(), abs=1e-5)
