"""A training job for tests/test_distributed.py, started like a workflow script: it calls
emkt.distributed.relaunch, so with distributed.processes > 1 it runs itself under torchrun.

Usage: python distributed_job.py JOB.json. JOB.json holds the config, the data files
(split, labelled, pool), the stages to run (baseline, joint), an output folder and the
resumable-state file of the baseline stage (kept, not cleared, for the test to inspect).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from emkt.distributed import init_process_group, relaunch, shutdown  # noqa: E402
from emkt.resume import Checkpointing  # noqa: E402
from emkt.runtime import seed_everything, select_device, set_threads  # noqa: E402
from emkt.store import DataFiles  # noqa: E402
from emkt.training import joint_train, pretrain_teacher, train_student_baseline  # noqa: E402

job = json.loads(Path(sys.argv[1]).read_text())
config = job["config"]
relaunch(config["distributed"])
group, device = init_process_group("cpu", config["distributed"]["backend"])
set_threads(1)
seed_everything(0)
files = DataFiles(**job["files"])
out = Path(job["out"])
if "baseline" in job["stages"]:
    student = train_student_baseline(config, 0, files, out / "baseline.csv", select_device(device),
                                     Checkpointing(Path(job["state"]), "test"))
    if group.main:
        torch.save(student.state_dict(), out / "baseline.pt")
if "joint" in job["stages"]:
    teacher = pretrain_teacher(config, 0, files, out / "pretrain.csv", select_device(device))
    teacher, student = joint_train(config, 0, files, teacher, out / "joint.csv", select_device(device))
    if group.main:
        torch.save({"teacher": teacher.state_dict(), "student": student.state_dict()}, out / "joint.pt")
(out / f"rank{group.rank}.done").write_text(str(group.world))
shutdown()
