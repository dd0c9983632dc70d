"""CI's closing lines: each real component the suite can use, exercised or skipped and why.

Reads the JSON record the test session writes (tests/conftest.py, EMKT_COMPONENT_RECORD:
component -> [{test, outcome, reason}]) and prints one line per component. Standard library
only: it runs with the system python3, also when the venv or the tests failed.

Usage:  python3 .ci/components.py RECORD.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Components CI is meant to exercise, in the order they are reported.
COMPONENTS = ("local SLURM cluster", "loopback HTTP server", "em-mito-mini fixture", "CUDA")


def summary(record: dict[str, list[dict]]) -> list[str]:
    """One line per component: exercised (with the count of tests that ran, and failures),
    skipped (with each distinct reason), or not run (no selected test needs it)."""
    lines = []
    for name in COMPONENTS:
        tests = record.get(name, [])
        ran = [t for t in tests if t["outcome"] in ("passed", "failed")]
        failed = sum(t["outcome"] == "failed" for t in ran)
        if ran:
            line = f"exercised by {len(ran)} test(s)" + (f", {failed} FAILED" if failed else "")
        elif tests:
            reasons = sorted({" ".join(str(t.get("reason") or "no reason given").split()) for t in tests})
            line = f"skipped ({len(tests)} test(s)): " + "; ".join(reasons)
        else:
            line = "not exercised: no test that needs it was run"
        lines.append(f"CI: {name}: {line}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        for name in COMPONENTS:
            print(f"CI: {name}: unknown: no record of the tests ({path}: {error.__class__.__name__}); "
                  "did the tests run?")
        return 1
    print("\n".join(summary(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
