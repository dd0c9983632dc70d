"""The SLURM cluster the SLURM tests submit to, and the slice of the demo DAG they run through it.

The cluster is the running one (``sinfo`` answers) or the local single-node one from
``../shared/slurm`` (started here when root, stopped again by whoever started it). The slice
runs in the background from the start of the session (``BackgroundSlurmRun``): through SLURM a
job waits for the plugin's next status check (2 s, then 10 s longer after each check that
finds nothing finished), so the run is mostly waiting, and the other tests run meanwhile.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, REPO, BackgroundRun, copy_external_inputs

SLURM_SCRIPTS = REPO.parent / "shared" / "slurm"
# Through SLURM: one chain of the shared demo run's DAG, with its config (DEMO), whose outputs
# the demo run (the local reference) also writes: the data jobs, seed 0's teacher pretraining,
# joint training and expansion with the default variant, and one inference job (segmenting the
# demo's new images with the expanded student).
SLURM_TARGETS = ["results/predictions/new_images/expanded_anchored_0"]
TIMEOUT_S = 900
JOBNAME_PREFIX = f"emkttest{os.getpid()}"


def run_command(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return run_command("sinfo", "-h", timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def stop_local_cluster() -> None:
    subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-local-slurm.sh")], capture_output=True, timeout=120)


def start_cluster_if_needed() -> bool:
    """Make sure a SLURM cluster with accounting answers; True if this call started the local
    one (the caller stops it). Skips (pytest.skip) with the reason where none can run."""
    started = False
    if not cluster_answers():
        start = SLURM_SCRIPTS / "start-local-slurm.sh"
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers (sinfo) and starting the local one needs root")
        if not start.is_file():
            pytest.skip(f"no SLURM cluster answers (sinfo) and {start} is missing")
        try:
            result = subprocess.run(["bash", str(start)], env={**os.environ, "SLURM_WITH_DBD": "1"},
                                    capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as error:
            stop_local_cluster()
            pytest.skip(f"{start} did not finish in 900 s:\n{tail(str(error.stdout or ''))}")
        started = True  # stop what it may have started, also when it failed half-way
        if result.returncode != 0 or not cluster_answers():
            stop_local_cluster()
            pytest.skip(f"{start} failed ({result.returncode}):\n{tail(result.stdout + result.stderr)}")
    accounting = run_command("sacct", "-n", "-X", "-S", "now")
    if accounting.returncode != 0:
        if started:
            stop_local_cluster()
        pytest.skip(f"the SLURM cluster has no working accounting (sacct: {accounting.stderr.strip()}); "
                    "this test checks the jobs in sacct")
    return started


def partition() -> str:
    """'debug' (the local cluster's) where it exists, else the cluster's default partition."""
    names = run_command("sinfo", "-h", "-o", "%P").stdout.split()
    if "debug" in names or "debug*" in names or not names:
        return "debug"
    return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


def user_account() -> str | None:
    """An account this user may submit to (the local cluster: 'root'), if accounting has any."""
    result = run_command("sacctmgr", "-n", "-P", "show", "associations", f"user={getpass.getuser()}",
                         "format=account")
    accounts = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return accounts[0] if result.returncode == 0 and accounts else None


def cluster_profile(folder: Path) -> Path:
    """The repository's slurm/config.yaml, adjusted for a CPU-only node without conda."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "set-resources" not in profile  # GPU counts come from the config (the test config asks for none)
    profile.pop("software-deployment-method")
    profile["default-resources"]["slurm_partition"] = partition()
    account = user_account()
    if account:  # as a user would set it; the plugin checks it with sacctmgr
        profile["default-resources"]["slurm_account"] = account
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["seconds-between-status-checks"] = 2
    profile["slurm-jobname-prefix"] = JOBNAME_PREFIX  # to find (and cancel) this test's jobs
    out = folder / "profile"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


def cancel_leftover_jobs() -> None:
    listed = run_command("squeue", "-h", "-o", "%i %j").stdout.split("\n")
    ids = [line.split()[0] for line in listed if line.strip() and line.split()[1].startswith(JOBNAME_PREFIX + "_")]
    if ids:
        run_command("scancel", *ids)


class BackgroundSlurmRun:
    """The slice SLURM_TARGETS of the demo DAG (config DEMO) through SLURM, in ``folder``:
    a thread starts the cluster if needed, then the run, so that the caller goes on at once.
    ``wait`` gives (the run's folder, Snakemake's output, a time before its first job), or
    raises what stopped it (a skip where no cluster can run); ``stop`` ends the run, its
    jobs and the cluster this object started."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.run: BackgroundRun | None = None
        self.started_cluster = False
        self.since: datetime | None = None
        self.error: BaseException | None = None  # pytest.skip raises a BaseException
        self.stopping: threading.Thread | None = None
        self.thread = threading.Thread(target=self._start, name="slurm-run", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.started_cluster = start_cluster_if_needed()
            profile = cluster_profile(self.folder)
            workdir = self.folder / "slurm"
            workdir.mkdir()
            copy_external_inputs(workdir)  # the demo config's external set and new images, as the demo has them
            self.since = datetime.now() - timedelta(seconds=5)
            # The same config as the shared demo run (the local reference), which runs meanwhile:
            # the results do not depend on load.
            self.run = BackgroundRun(workdir, DEMO, "--profile", str(profile), *SLURM_TARGETS, cores=None,
                                     timeout_s=TIMEOUT_S)
        except BaseException as error:  # noqa: BLE001 - handed to the test that waits for the run
            self.error = error

    def wait(self) -> tuple[Path, str, datetime]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        try:
            output = self.run.wait()
        except AssertionError:  # failed, or hung and interrupted: no job of this test may stay queued
            cancel_leftover_jobs()
            raise
        return self.run.workdir, output, self.since

    def stop(self) -> None:
        self.thread.join()
        if self.stopping is not None:
            self.stopping.join()
        else:
            self._stop_now()

    def stop_in_background(self) -> None:
        """``stop`` in a thread (stopping the local cluster takes ~10 s), for when its last
        reader is done and other tests go on; ``stop`` then waits for it."""
        if self.stopping is None:
            self.thread.join()
            self.stopping = threading.Thread(target=self._stop_now, name="slurm-stop", daemon=True)
            self.stopping.start()

    def _stop_now(self) -> None:
        try:
            if self.run is not None and self.run.process.poll() is None:
                self.run.stop()
                cancel_leftover_jobs()
        finally:
            if self.started_cluster:
                stop_local_cluster()
                self.started_cluster = False
