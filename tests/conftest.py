"""Shared fixtures: repository paths, the real-EM fixture, tiny configs."""

from __future__ import annotations

import contextlib
import copy
import re
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from emkt.config import load_config, validate_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "em-mito-mini"

# Settings small enough for a whole DAG in well under a minute on 2 cores.
TINY = {
    "seeds": [0, 1],
    "device": "cpu",
    "conditions": ["baseline", "expansion", "ensemble_distillation", "pseudo_label", "feature_distillation"],
    "data": {"source": "synthetic",
             "synthetic": {"n_sources": 2, "images_per_source": 8, "image_size": [48, 48],
                           "unlabelled_images": 24, "seed": 3}},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0},
    "store": {"labelled_shards": 2, "pool_shards": 2, "pool_tile": 48},
    "input_size": 32,
    "loader": {"num_workers": 0, "crops_per_image": 1},
    "train": {"batch_size": 8, "lr": 1.0e-3, "lr_step_epochs": 5},
    "student": {"patch_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2,
                "deconv_chns": 8},
    "teacher": {"channels": [4, 8], "strides": [2, 2], "num_res_units": 1},
    "error_map_teacher": {"channels": [4, 8], "strides": [2], "num_res_units": 1},
    "teacher_pretrain": {"epochs": 2, "val_corruptions_per_image": 2},
    "student_baseline": {"epochs": 2},
    "joint": {"epochs": 2},
    # the expansion guards are unit-tested; here both epochs always run
    # (and the default variant, which needs one teacher kind)
    "expand": {"epochs": 2, "images_per_epoch": 16, "stop_fraction_ratio": None, "stop_patience": 0,
               "variants": ["anchored"]},
    "segmenters": {"unet": {"type": "unet", "width": 4, "depth": 3, "epochs": 2},
                   "basicunet": {"type": "basicunet", "width": 4, "epochs": 2}},
    "ensemble_distillation": {"epochs": 2},
    "feature_distillation": {"student": {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1,
                                         "num_heads": 2, "deconv_chns": 8}, "epochs": 2},
    "evaluate": {"panel_images": 2},
    "resources": {"train": {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0},
                  "evaluate": {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0},
                  "data": {"threads": 1, "mem_mb": 1000, "runtime": 10, "gpu": 0},
                  "light": {"threads": 1, "mem_mb": 500, "runtime": 5}},
}

# The expansion condition only: for tests about the workflow machinery, not the conditions.
TINY_EXPANSION = {**TINY, "conditions": ["baseline", "expansion"]}


def merged(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# The shared demo run (fixture demo_run) also scores every network on an external labelled set
# (real EM, other sizes than the synthetic training images) and segments a folder of new images
# with one student. The default expansion variant, anchored (one teacher kind, the Critic); the
# real-EM fixture run (tests/test_workflow.py) has the error-map teacher and its variant.
DEMO = merged(TINY, {
    # every condition, mean teacher included
    "conditions": [*TINY["conditions"], "mean_teacher"],
    # one pool shard: one pseudo-labelling job per seed (the sharded path runs in tests of its own)
    "store": {"pool_shards": 1},
    "external_test": [{"name": "em_mito_mini", "dir": "external/em_mito_mini"}],
    "predict": [{"name": "new_images", "dir": "new_images", "networks": ["expanded_anchored"], "seeds": [0],
                 "probability": "uint8"}],
})
NEW_IMAGES = {"mitochondria1.tiff": (138, 224), "mitochondria2.tiff": (224, 224), "pan_seg.png": (256, 256)}


def snakemake_command(workdir: Path, config: dict, *args: str, cores: int | None = 2) -> list[str]:
    """The command running the repository's Snakefile in ``workdir`` with config.yaml
    overridden by ``config`` (written to ``workdir/test_config.yaml``)."""
    import sys

    import yaml

    override = workdir / "test_config.yaml"
    override.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(REPO / "config.yaml"), str(override)]
    return command + (["--cores", str(cores)] if cores else []) + list(args)


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` with config.yaml overridden by ``config``."""
    import subprocess

    result = subprocess.run(snakemake_command(workdir, config, *args), capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def job_stats(output: str) -> Counter:
    """Rule counts from the 'Job stats' table Snakemake prints (dry runs too)."""
    counts: Counter = Counter()
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread in the test process (where a test module imported torch): the tensors
    here are small, and on a 2-core machine where anything else runs (a workflow job, the shared
    demo run, another user's work) two threads wait for each other at every operation (a
    300-step UNet training: 23 s on one thread, 515 s on two beside two busy processes)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread_in_module():
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures(...)``):
    on a busy 2-core machine two threads contend (10x slower); the other modules get theirs back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checked_configs() -> dict[str, dict]:
    """config.yaml and TINY on top of it, each loaded and checked once (the schema check takes
    a few tenths of a second); tests get copies."""
    paper = load_config(REPO / "config.yaml")
    return {"paper": paper, "tiny": validate_config(merged(paper, TINY))}


@pytest.fixture
def paper_config(checked_configs) -> dict:
    return copy.deepcopy(checked_configs["paper"])


@pytest.fixture
def tiny_config(checked_configs) -> dict:
    return copy.deepcopy(checked_configs["tiny"])


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-EM fixture not found at {SHARED_DATA}")
    return SHARED_DATA


def prepare_data(labelled_dir: Path, pool_dir: Path | None, out: Path, config: dict, group_by: str = "none"):
    """Index, pack and split a data folder the way the workflow's rules do; returns DataFiles."""
    from emkt.data import split_index
    from emkt.indexing import build_index
    from emkt.store import pack_store
    from emkt.store import DataFiles

    index, _ = build_index(labelled_dir, pool_dir)
    labelled = index[index["set"] == "labelled"].reset_index(drop=True)
    pool = index[index["set"] == "unlabelled"].reset_index(drop=True)
    store = config["store"]
    pack_store(labelled, "labelled", out, store["labelled_shards"])
    if len(pool):
        pack_store(pool, "pool", out, store["pool_shards"], tile=store["pool_tile"])
    split = config["split"]
    table = split_index(labelled.drop(columns="set"), split["train"], split["val"], split["test"], split["seed"],
                        group_by)
    table.to_csv(out / "split.csv", index=False)
    return DataFiles(out / "split.csv", out / "labelled.json", out / "pool.json" if len(pool) else None)


def make_tiny_data(root: Path, config: dict):
    """Generated labelled images (2 sources x 6, 48x48) and a 16-image pool, indexed, packed and split."""
    from emkt.synthetic import generate_labelled_set, generate_unlabelled_pool

    generate_labelled_set(root / "labelled", 2, 6, (48, 48), seed=1)
    generate_unlabelled_pool(root / "pool", 16, (48, 48), seed=2)
    return prepare_data(root / "labelled", root / "pool", root / "store", config)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"), merged(load_config(REPO / "config.yaml"), TINY))


# --- the shared demo run -----------------------------------------------------------------------------
# The whole demo DAG (config DEMO, ~100 jobs, most of them a fresh Python process importing torch
# and MONAI) runs once per session: tests that only read its outputs share it. When a selected
# test reads it, it starts in the background as the session starts, and the other tests run
# beside it (one torch thread each: see one_torch_thread); the tests that read it come last
# (pytest_collection_modifyitems) and wait for it.


def copy_external_inputs(workdir: Path) -> None:
    """The demo's external set (the real-EM fixture's cem_examples: 138x224 and 224x224
    images, instance masks) and new images (TIFF and PNG); a generated set if the fixture
    is missing."""
    import shutil

    import tifffile
    from PIL import Image

    from emkt.synthetic import generate_labelled_set

    external = workdir / "external" / "em_mito_mini"
    source = SHARED_DATA / "cem_mitolab"
    if source.is_dir():
        shutil.copytree(source / "cem_examples", external / "cem_examples")
        images = {name: source / folder / "images" / name.replace(".png", ".tiff")
                  for name, folder in zip(NEW_IMAGES, ["cem_examples", "cem_examples", "empanada_panoptic"])}
    else:
        generated = generate_labelled_set(external, 1, 5, (70, 90), seed=9)
        images = {f"{k}.tiff": path for k, path in enumerate(generated[:3])}
    (workdir / "new_images").mkdir()
    for name, path in images.items():
        if name.endswith(".png"):
            Image.fromarray(tifffile.imread(path)).save(workdir / "new_images" / name)
        else:
            shutil.copy(path, workdir / "new_images" / name)


class BackgroundRun:
    """A Snakemake run of the repository's Snakefile in ``workdir`` (snakemake_command's
    arguments), started at once and waited for later, so that other work runs meanwhile. Its
    output goes to ``<workdir>.out`` (a file: no pipe to fill up); it runs in a session of its
    own, so that ``stop`` ends it and its jobs and nothing else."""

    def __init__(self, workdir: Path, config: dict, *args: str, cores: int | None = 2, timeout_s: float = 1800):
        import subprocess
        import time

        self.workdir, self.log, self.timeout_s = workdir, Path(f"{workdir}.out"), timeout_s
        self.deadline = time.monotonic() + timeout_s
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(snakemake_command(workdir, config, *args, cores=cores), cwd=workdir,
                                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait(self) -> str:
        """The run's output once it has finished; an AssertionError with the end of it if the
        run failed, or did not finish within timeout_s of its start (it is stopped then)."""
        import subprocess
        import time

        try:
            self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"snakemake in {self.workdir} did not finish in {self.timeout_s} s:\n"
                                 f"{self.log.read_text()[-6000:]}") from None
        output = self.log.read_text()
        if self.process.returncode != 0:
            raise AssertionError(f"snakemake in {self.workdir} failed ({self.process.returncode}):\n{output[-8000:]}")
        return output

    def stop(self) -> None:
        """SIGINT first (Snakemake ends its jobs, and cancels its SLURM jobs), then the whole
        process group it leads."""
        import os
        import signal
        import subprocess

        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="session")
def demo_dag(tmp_path_factory):
    """The shared demo run, started (not yet finished)."""
    workdir = tmp_path_factory.mktemp("demo_dag")
    copy_external_inputs(workdir)
    run = BackgroundRun(workdir, DEMO)
    yield run
    run.stop()


@pytest.fixture(scope="session")
def demo_run(demo_dag, request) -> Path:
    """The working folder of the finished demo run (config DEMO). Once it has finished, the
    rerun of its touch example (touched_demo_run) starts beside the tests that read it."""
    demo_dag.wait()
    if "touched_demo_run" in _fixtures_read:
        # pytest keeps a failed fixture's error for the test that reads it: the touch test
        # fails alone, not every reader of the demo run
        with contextlib.suppress(Exception):
            request.getfixturevalue("touched_demo_run")
    return demo_dag.workdir


class TouchedDemoRun:
    """The demo run's touch example (docs/pipeline.md, "Regenerating results") on a copy of the
    finished demo run (file times and Snakemake's records kept), so that the other tests read
    the demo run meanwhile: the file touched, the rules the example lists, the checkpoints'
    times before, the dry run's output, and the real run, started in the background."""

    def __init__(self, demo: Path, copy: Path):
        import shutil

        from docs_text import touch_example

        shutil.copytree(demo, copy, symlinks=True)  # copy2: modification times kept
        self.workdir = copy
        self.touched, self.rules = touch_example()
        self.models_before = {p.name: p.stat().st_mtime_ns for p in (copy / "results" / "models").iterdir()}
        (copy / self.touched).touch()
        dry = snakemake(copy, DEMO, "-n")
        self.dry_run = dry.stdout + dry.stderr
        self.rerun = BackgroundRun(copy, DEMO)


@pytest.fixture(scope="session")
def touched_demo_run(demo_dag, tmp_path_factory) -> TouchedDemoRun:
    demo_dag.wait()
    touched = TouchedDemoRun(demo_dag.workdir, tmp_path_factory.mktemp("touched_demo") / "run")
    yield touched
    touched.rerun.stop()


@pytest.fixture(scope="session")
def slurm_dag(tmp_path_factory):
    """A slice of the demo DAG through SLURM (tests/slurm_cluster.py), started (not finished)."""
    from slurm_cluster import BackgroundSlurmRun

    run = BackgroundSlurmRun(tmp_path_factory.mktemp("slurm"))
    _started_runs["slurm_dag"] = run
    yield run
    run.stop()


@pytest.fixture(scope="session")
def slurm_run(slurm_dag) -> tuple[Path, str, datetime]:
    """The finished SLURM slice: its folder, Snakemake's output and a time before its first job."""
    return slurm_dag.wait()


# --- the real-EM fixture run ---------------------------------------------------------------------------
# The em-mito-mini fixture served as the two EMPIAR archives by a real HTTP server on loopback
# (the pool archive's first transfer cut after REAL_EM_CUT bytes), run up to the summary table
# with FIXTURE_RUN; it starts with the session, beside the demo run, and its test comes last.
FIXTURE_RUN = merged(TINY_EXPANSION, {
    "seeds": [0],
    "data": {"source": "empiar", "max_excluded_fraction": 0.0},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0, "group_by": "source"},
    "store": {"labelled_shards": 2, "pool_shards": 3, "pool_tile": 224},
    "input_size": 64,
    # the other architectures through the whole chain: UNet students, a ViT regression teacher
    "student": {"type": "unet", "unet": {"width": 4, "depth": 3}},
    "teacher": {"type": "vit", "vit": {"patch_size": 16, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1,
                                       "num_heads": 2, "dropout_rate": 0.0}},
    "train": {"pos_weight": 5.0},
    "teacher_pretrain": {"epochs": 1},
    "student_baseline": {"epochs": 1},
    "joint": {"epochs": 1},
    # the error-map teacher's variant (the demo run has the default, anchored: the Critic alone)
    "expand": {"epochs": 1, "images_per_epoch": 8, "variants": ["error_map"]},
})
REAL_EM_POOL_ZIP = "/11035/data/cem1.5m.zip"
REAL_EM_CUT = 3_000_000


def zip_tree(folder: Path, archive: Path, top: str) -> Path:
    """A zip of ``folder``'s files under the top folder ``top``/, like the EMPIAR archives."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, f"{top}/{path.relative_to(folder)}")
    return archive


class RealEmRun:
    """The mirror (archives zipped from the fixture, a loopback server) and the run in
    ``folder``, started at once; ``wait`` gives (the run's folder, the server) once it has
    finished, or skips where the fixture is missing."""

    def __init__(self, folder: Path):
        from loopback import LoopbackServer

        self.server, self.run, self.missing = None, None, None
        if not SHARED_DATA.is_dir():
            self.missing = f"real-EM fixture not found at {SHARED_DATA}"
            return
        root = folder / "mirror"
        zip_tree(SHARED_DATA / "cem_mitolab", root / "11037" / "data" / "cem_mitolab.zip", "cem_mitolab")
        zip_tree(SHARED_DATA / "unlabelled", root / "11035" / "data" / "cem1.5m.zip", "cem1.5m")
        self.server = LoopbackServer(root).start()
        self.server.cut_after[REAL_EM_POOL_ZIP] = REAL_EM_CUT
        workdir = folder / "run"
        workdir.mkdir()
        config = merged(FIXTURE_RUN, {"data": {"empiar": {"url_base": self.server.url, "retries": 3}}})
        self.run = BackgroundRun(workdir, config, "results/tables/summary.csv")

    def wait(self):
        if self.missing:
            pytest.skip(self.missing)
        self.run.wait()
        return self.run.workdir, self.server

    def stop(self) -> None:
        if self.run is not None:
            self.run.stop()
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def real_em_dag(tmp_path_factory):
    run = RealEmRun(tmp_path_factory.mktemp("real_em"))
    yield run
    run.stop()


@pytest.fixture(scope="session")
def real_em_run(real_em_dag) -> tuple[Path, LoopbackServer]:
    """The finished real-EM fixture run: its folder and the mirror's server (its request log)."""
    return real_em_dag.wait()


# the shared runs, by the fixture a test reads and the fixture that starts the run
SHARED_RUNS = {"slurm_run": "slurm_dag", "demo_run": "demo_dag", "touched_demo_run": "demo_dag",
               "real_em_run": "real_em_dag"}


def reads_shared_run(item) -> bool:
    return bool(set(SHARED_RUNS) & set(getattr(item, "fixturenames", ())))


def waits_for_the_touch_rerun(item) -> bool:
    return "touched_demo_run" in getattr(item, "fixturenames", ())


def is_workflow_test(item) -> bool:
    return item.get_closest_marker("workflow") is not None


def workflow_tests_last(items) -> None:
    """Unit tests first, then the workflow tests, then the tests that read a shared run (the
    demo run, the SLURM slice), the one waiting for the touch example's rerun last; the order
    is kept within each group."""
    items.sort(key=lambda item: (is_workflow_test(item), reads_shared_run(item), waits_for_the_touch_rerun(item)))


# In several processes (pytest-xdist, `make test`: -n 2) the readers of the shared runs go to
# one worker, first of all, as one unit of work (SharedRunsScheduling): its first test starts
# every shared run, and that worker waits for them while the other workers run everything else.
# (xdist's own --dist loadgroup does not group under pytest 9.2: pytest-xdist issue #1386.)
SHARED_READERS_ENV = "EMKT_SHARED_READERS"  # a file: the workers write the readers' node ids there


def in_worker(config) -> bool:
    return hasattr(config, "workerinput")


def shared_readers_first(items) -> None:
    """The readers of shared runs first (the touch rerun's reader last among them), then the
    workflow tests, then the slow and the other unit tests, so that the longest tests start
    early; their node ids go to SHARED_READERS_ENV's file for the scheduler. The first reader
    also asks for every shared run's starting fixture, so that all of them start with it."""
    import os

    items.sort(key=lambda item: (not reads_shared_run(item), waits_for_the_touch_rerun(item),
                                 not is_workflow_test(item), item.get_closest_marker("slow") is None))
    readers = [item for item in items if reads_shared_run(item)]
    if os.environ.get(SHARED_READERS_ENV):
        Path(os.environ[SHARED_READERS_ENV]).write_text("".join(f"{item.nodeid}\n" for item in readers))
    if readers:
        read = {name for item in items for name in getattr(item, "fixturenames", ())}
        starts = dict.fromkeys(start for reader, start in SHARED_RUNS.items() if reader in read)
        readers[0].fixturenames[:0] = [name for name in starts if name not in readers[0].fixturenames]


def pytest_configure(config) -> None:
    # the controller of an xdist run: a file for the workers' list of shared readers
    import os
    import tempfile

    if not in_worker(config) and getattr(config.option, "numprocesses", None):
        handle, path = tempfile.mkstemp(prefix="emkt-shared-readers-")
        os.close(handle)
        os.environ[SHARED_READERS_ENV] = path


def pytest_unconfigure(config) -> None:
    import os

    if not in_worker(config) and os.environ.get(SHARED_READERS_ENV):
        Path(os.environ.pop(SHARED_READERS_ENV)).unlink(missing_ok=True)


def pytest_xdist_make_scheduler(config, log):
    """Tests one at a time to whichever worker is free, except the shared runs' readers: one
    unit of work, to one worker."""
    import os

    from xdist.scheduler import LoadScopeScheduling

    class SharedRunsScheduling(LoadScopeScheduling):
        shared: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.shared is None:  # written by the workers as they collected, before scheduling
                self.shared = set(Path(os.environ[SHARED_READERS_ENV]).read_text().splitlines())
            return "shared runs" if nodeid in self.shared else nodeid

    return SharedRunsScheduling(config, log) if os.environ.get(SHARED_READERS_ENV) else None


_runs_to_start: list[str] = []  # the shared runs some selected test reads: they start as the session starts
_started_runs: dict = {}  # fixture name -> the run it started, where it can be released early
_last_slurm_reader: list[str] = []  # the node id of the last test reading the SLURM slice
_fixtures_read: set[str] = set()  # every fixture some selected test reads


def pytest_collection_finish(session) -> None:
    read = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    _fixtures_read.update(read)
    _runs_to_start[:] = dict.fromkeys(start for reader, start in SHARED_RUNS.items() if reader in read)
    _last_slurm_reader[:] = [item.nodeid for item in session.items if "slurm_run" in getattr(item, "fixturenames", ())][-1:]


def pytest_runtest_teardown(item, nextitem) -> None:
    # the SLURM slice's last reader is done: its cluster stops while the other tests go on
    if [item.nodeid] == _last_slurm_reader and "slurm_dag" in _started_runs:
        _started_runs["slurm_dag"].stop_in_background()


@pytest.fixture(scope="session", autouse=True)
def shared_runs_in_the_background(request):
    """The shared runs that selected tests read start with the session; the tests before
    their readers run beside them. In an xdist worker, the first reader starts them instead
    (shared_readers_first): only the worker that runs the readers starts the runs."""
    if in_worker(request.config):
        return
    for fixture in _runs_to_start:
        request.getfixturevalue(fixture)


# --- what the run exercised ------------------------------------------------------------------------
# Each real component and how to tell that a test needs it. With EMKT_COMPONENT_RECORD set,
# the session writes there, as JSON, each such test's outcome (passed, failed or skipped with
# the reason); .ci/components.py turns that into CI's closing lines.
COMPONENT_RECORD_ENV = "EMKT_COMPONENT_RECORD"
COMPONENTS = {
    "local SLURM cluster": lambda item: item.get_closest_marker("slurm") is not None,
    "loopback HTTP server": lambda item: bool({"served", "real_em_run"} & set(item.fixturenames)),
    "em-mito-mini fixture": lambda item: bool({"shared_data", "em_folder", "real_em_run"} & set(item.fixturenames)),
    "CUDA": lambda item: item.path.name == "test_cuda.py",
}
_component_tests: dict[str, set[str]] = {}  # component -> node ids of the collected tests needing it
_component_outcomes: dict[str, dict[str, dict]] = {name: {} for name in COMPONENTS}  # component -> test -> outcome


def pytest_collection_modifyitems(config, items) -> None:
    if in_worker(config):
        shared_readers_first(items)
    else:
        workflow_tests_last(items)
    for name, needs in COMPONENTS.items():
        _component_tests[name] = {item.nodeid for item in items if needs(item)}


def pytest_runtest_logreport(report) -> None:
    # A test's outcome: its call (it ran: passed or failed), or the phase that skipped it; a
    # failure in any phase (setup, teardown) wins.
    if report.when != "call" and not (report.skipped or report.failed):
        return
    for name, tests in _component_tests.items():
        seen = _component_outcomes[name].get(report.nodeid)
        if report.nodeid in tests and (seen is None or report.failed):
            reason = None
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2].removeprefix("Skipped: ")
            _component_outcomes[name][report.nodeid] = {"outcome": report.outcome, "reason": reason}


def pytest_sessionfinish(session) -> None:
    import json
    import os

    record = os.environ.get(COMPONENT_RECORD_ENV)
    if not record:
        return
    if in_worker(session.config):  # each worker its part; the controller joins them
        record = f"{record}.{session.config.workerinput['workerid']}"
    outcomes = {name: [{"test": test, **outcome} for test, outcome in tests.items()]
                for name, tests in _component_outcomes.items()}
    if hasattr(session.config, "workerinput") or not session.config.pluginmanager.hasplugin("dsession"):
        Path(record).write_text(json.dumps(outcomes, indent=1))
        return
    for part in sorted(Path(record).parent.glob(f"{Path(record).name}.gw*")):
        for name, tests in json.loads(part.read_text()).items():
            outcomes.setdefault(name, []).extend(tests)
        part.unlink()
    Path(record).write_text(json.dumps(outcomes, indent=1))
