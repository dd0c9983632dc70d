"""What the workflow scripts share: import path, log file, threads, device, and the course of
a training job (``TrainingJob``: start, resume, train, save, clear).

Snakemake puts this folder on sys.path for the scripts beside it. The package is imported
from the repository's src/ so that the same code runs in the project venv and in the
rule's conda env (which installs only the dependencies). This module imports only the
standard library at its top; each helper imports the parts of emkt it needs.
"""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# First on the path, even when it is there already: Snakemake's script preamble appends the
# workflow process's sys.path (which holds SRC, after site-packages), so an installed emkt,
# e.g. an editable install of another checkout, would otherwise shadow this repository's.
if SRC.is_dir() and sys.path[:1] != [str(SRC)]:
    sys.path.insert(0, str(SRC))


def start_job(snakemake) -> dict:
    """Send stderr (tqdm, warnings, tracebacks) and logging to the rule's log; return the config."""
    from emkt.cluster import environment_rank

    launched = environment_rank()
    if snakemake.log:
        log_path = Path(str(snakemake.log[0]))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # processes started by a launcher (emkt.distributed.relaunch) add to their parent's log
        sys.stderr = open(log_path, "a" if launched else "w", buffering=1)
    rank = launched[0] if launched else 0
    # every process logs its warnings and errors; progress and info come from rank 0 only
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", force=True)
    from emkt.config import validate_config

    return validate_config(dict(snakemake.config))


def start_torch_job(snakemake, seed: int | None = None):
    """start_job plus threads, seeds and the device; returns (config, device)."""
    config = start_job(snakemake)
    from emkt.runtime import seed_everything, select_device, set_threads

    set_threads(snakemake.threads)
    if seed is not None:
        seed_everything(seed)
    device = select_device(config["device"])
    logging.getLogger("emkt").info("running on %s with %d thread(s)", device, snakemake.threads)
    return config, device


def start_training_job(snakemake, seed: int):
    """start_torch_job for a training stage that may run as several data-parallel processes
    (config section 'distributed'): the job's own process launches them and exits with their
    status; each of them joins the process group and takes its GPU. Returns (config, device)."""
    config = start_job(snakemake)
    from emkt.distributed import init_process_group, relaunch, shutdown
    from emkt.runtime import seed_everything, select_device, set_threads

    settings = config["distributed"]
    relaunch(settings)  # returns only in a launched process, or with one process configured
    group, device_choice = init_process_group(config["device"], settings["backend"])
    atexit.register(shutdown)
    # the job's cores are shared by the processes on this node
    threads = max(1, snakemake.threads // settings["processes"]) if group.world > 1 else snakemake.threads
    set_threads(threads)
    seed_everything(seed)
    device = select_device(device_choice)
    logging.getLogger("emkt").info("process %d of %d on %s with %d thread(s)", group.rank, group.world, device, threads)
    return config, device


def data_files(snakemake, config: dict):
    """The split, the labelled store and (when an input) the pool store of a job, with the
    config's ignore label: what every training and evaluation job reads."""
    from emkt.store import DataFiles

    inputs = snakemake.input
    return DataFiles(inputs.split, inputs.labelled, getattr(inputs, "pool", None), config["data"]["ignore_label"])


def save_segmentation_network(snakemake, config: dict, device, path, model, kind: str, arch: dict, extra: dict,
                              input_size: int | None = None, seed: int = 0) -> None:
    """Save a segmentation network with its calibration on the validation split (temperature,
    best-IoU threshold, validation scores: emkt.calibration.calibrate) in ``extra["calibration"]``.
    In a data-parallel job only rank 0 calibrates and writes."""
    from emkt import distributed
    from emkt.calibration import calibrate
    from emkt.checkpoints import save_model

    if not distributed.current().main:
        return
    size = input_size or config["input_size"]
    items = data_files(snakemake, config).split_items("val")
    calibration = calibrate(model.to(device), items, size, config["evaluate"], device, seed)
    save_model(path, model, kind, arch, size, {**extra, "calibration": calibration})


class TrainingJob:
    """One training stage's job from start to end, used as ``with TrainingJob(snakemake, seed) as job:``.

    Starting it does start_training_job (the data-parallel processes, log, threads, seed,
    device) and finds the resumable state: its file (rule param 'state') and a fingerprint of
    the config, the job's inputs, the rule and the seed (emkt.resume). ``train`` runs a stage
    of emkt.training with the job's config, seed, files, history (output 'history'), device
    and state; ``save_segmenter`` and ``save_teacher`` write its networks. When the block ends
    without an error, that is after the outputs are written, the state is removed; after an
    error it stays, and the job's retry resumes from it.
    """

    def __init__(self, snakemake, seed: int) -> None:
        self.snakemake, self.seed = snakemake, seed
        self.config, self.device = start_training_job(snakemake, seed)
        from emkt.resume import Checkpointing, fingerprint

        self.resume = Checkpointing(Path(snakemake.params.state),
                                    fingerprint(self.config, list(snakemake.input), rule=snakemake.rule, seed=seed))
        self.files = data_files(snakemake, self.config)

    def __enter__(self) -> TrainingJob:
        return self

    def __exit__(self, error_type, error, traceback) -> bool:
        if error_type is None:
            self.resume.clear()
        return False

    def train(self, stage, /, *inputs, **settings):
        """``stage(config, seed, files, *inputs, history, device, resume, **settings)``: the
        signature every stage function of emkt.training has."""
        return stage(self.config, self.seed, self.files, *inputs, self.snakemake.output.history, self.device,
                     self.resume, **settings)

    def starting_student(self):
        """(student, its condition) a pool stage starts from: the baseline student when the
        rule's input 'init' names it (config init: baseline), else a new one (None: scratch)."""
        if self.snakemake.input.init:
            from emkt.checkpoints import load_model

            return load_model(self.snakemake.input.init[0], expected_kind="student")[0], "baseline"
        from emkt.models import build_student

        return build_student(self.config["student"], self.config["input_size"]), None

    def save_segmenter(self, path, model, kind: str, arch: dict, extra: dict) -> None:
        """save_segmentation_network: the network with its validation calibration (rank 0)."""
        save_segmentation_network(self.snakemake, self.config, self.device, path, model, kind, arch, extra,
                                  seed=self.seed)

    def save_teacher(self, path, teacher, kind: str, extra: dict) -> None:
        """A teacher of ``kind`` (its arch from the config: emkt.models.teacher_arch), by rank 0."""
        from emkt.checkpoints import save_model
        from emkt.models import teacher_arch

        save_model(path, teacher, "teacher", teacher_arch(self.config, kind), self.config["input_size"], extra)
