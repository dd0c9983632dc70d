"""Where the demo's time goes: the wall time of the demo DAG (`make demo`'s snakemake command,
demo.yaml, in a fresh folder) and how much of it is the start-up of its jobs.

Every job is a new Python process that imports its script's modules (torch and MONAI for
every job that runs a network) before it does any work. The start-up of one job of each
script is measured alone, as the median of --repeats fresh interpreters importing exactly
what that script imports at its top level (parsed from the script), and multiplied by the
number of jobs of its rule in the run. Printed: the DAG's wall time, the sum of the jobs' own
wall times (Snakemake's benchmark files), the sum of their start-ups, and the start-up per
rule. Target (issue 17): the demo DAG in at most 5 minutes on the 2-core machine.

Usage:  python benchmarks/demo_time.py [--cores 2] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"


def rule_scripts() -> dict[str, Path]:
    """Each rule's script, from the `rule X:` ... `script: "../scripts/Y.py"` pairs of the rule files."""
    scripts, rule = {}, None
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for line in smk.read_text().splitlines():
            if match := re.match(r"^rule (\w+):", line):
                rule = match.group(1)
            elif rule and (match := re.search(r'"\.\./scripts/(\w+\.py)"', line)):
                scripts[rule] = SCRIPTS / match.group(1)
    return scripts


def script_imports(script: Path) -> str:
    """The import statements of a workflow script, as one line of Python."""
    tree = ast.parse(script.read_text())
    nodes = [node for node in ast.walk(tree) if isinstance(node, ast.Import)
             or (isinstance(node, ast.ImportFrom) and node.module != "__future__")]
    return "; ".join(ast.unparse(node) for node in nodes)


def start_up_seconds(script: Path, repeats: int) -> float:
    code = f"import sys; sys.path[:0] = [{str(SCRIPTS)!r}, {str(REPO / 'src')!r}]; {script_imports(script)}"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def job_walls(workdir: Path) -> pd.DataFrame:
    """One row per job: rule and wall seconds (Snakemake's benchmark: files)."""
    rows = [{"rule": tsv.parent.name, "seconds": float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])}
            for tsv in (workdir / "results" / "benchmarks").rglob("*.tsv")]
    return pd.DataFrame(rows, columns=["rule", "seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per script for its start-up")
    parser.add_argument("--keep", type=Path, help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        workdir = args.keep or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                   str(workdir), "--cores", str(args.cores), "--configfile", str(REPO / "config.yaml"),
                   str(REPO / "demo.yaml")]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        dag_wall = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f"the demo DAG failed:\n{result.stderr[-3000:]}")
        jobs = job_walls(workdir)

    counts = Counter(jobs["rule"])
    scripts = rule_scripts()
    per_rule = []
    for rule, n in counts.items():
        one = start_up_seconds(scripts[rule], args.repeats) if rule in scripts else float("nan")
        per_rule.append({"rule": rule, "jobs": n, "job_s": jobs.loc[jobs["rule"] == rule, "seconds"].sum(),
                         "start_up_s_each": one, "start_up_s": one * n})
    table = pd.DataFrame(per_rule).sort_values("job_s", ascending=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    start_up = table["start_up_s"].sum()
    print(f"\ndemo DAG: {len(jobs)} jobs, wall {dag_wall:.0f} s ({dag_wall / 60:.1f} min) on {args.cores} cores; "
          f"sum of job walls {jobs['seconds'].sum():.0f} s, of which start-up (imports) {start_up:.0f} s "
          f"({start_up / jobs['seconds'].sum():.0%})")


if __name__ == "__main__":
    main()
