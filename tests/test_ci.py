"""CI's closing summary: which real components the tests exercised or skipped, and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import COMPONENT_RECORD_ENV, REPO

SUMMARY = REPO / ".ci" / "components.py"


def summarise(record: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUMMARY), str(record)], capture_output=True, text=True, timeout=60)


def test_the_summary_names_each_component_with_what_happened(tmp_path):
    record = tmp_path / "components.json"
    record.write_text(json.dumps({
        "local SLURM cluster": [{"test": "tests/test_slurm.py::test_a", "outcome": "skipped",
                                 "reason": "no SLURM cluster answers (sinfo) and\n starting the local one needs root"}],
        "loopback HTTP server": [{"test": "t::a", "outcome": "passed", "reason": None},
                                 {"test": "t::b", "outcome": "failed", "reason": None}],
        "CUDA": [{"test": "t::c", "outcome": "skipped", "reason": "no CUDA GPU on this machine"},
                 {"test": "t::d", "outcome": "skipped", "reason": "no CUDA GPU on this machine"}],
    }))
    done = summarise(record)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "CI: local SLURM cluster: skipped (1 test(s)): no SLURM cluster answers (sinfo) and starting the local one "
        "needs root",
        "CI: loopback HTTP server: exercised by 2 test(s), 1 FAILED",
        "CI: em-mito-mini fixture: not exercised: no test that needs it was run",
        "CI: CUDA: skipped (2 test(s)): no CUDA GPU on this machine",
    ]


def test_without_a_record_every_component_is_unknown(tmp_path):
    done = summarise(tmp_path / "missing.json")
    assert done.returncode == 1 and len(done.stdout.splitlines()) == 4
    assert all(": unknown: no record of the tests" in line for line in done.stdout.splitlines())


def test_the_test_session_records_what_needed_each_component(tmp_path):
    """A small pytest session with this suite's conftest: the record lists the tests per
    component, with outcomes and skip reasons."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_cuda.py").write_text(
        "import pytest\npytestmark = pytest.mark.skipif(True, reason='no CUDA GPU on this machine')\n"
        "def test_gpu():\n    pass\n")
    (tmp_path / "test_other.py").write_text(
        "import pytest\n"
        "@pytest.fixture\ndef served():\n    yield 'server'\n"
        "@pytest.mark.slurm\ndef test_cluster():\n    pytest.skip('sinfo: no cluster')\n"
        "def test_download(served):\n    assert served == 'server'\n"
        "def test_plain():\n    pass\n")
    record = tmp_path / "record.json"
    env = {**os.environ, COMPONENT_RECORD_ENV: str(record), "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(record.read_text()) == {
        "local SLURM cluster": [{"test": "test_other.py::test_cluster", "outcome": "skipped",
                                 "reason": "sinfo: no cluster"}],
        "loopback HTTP server": [{"test": "test_other.py::test_download", "outcome": "passed", "reason": None}],
        "em-mito-mini fixture": [],
        "CUDA": [{"test": "test_cuda.py::test_gpu", "outcome": "skipped", "reason": "no CUDA GPU on this machine"}],
    }
