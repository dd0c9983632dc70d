"""Jobs that only read tables, index or pack files do not pay for importing torch and MONAI
(several seconds per job, and a demo DAG has dozens of jobs)."""

import json
import subprocess
import sys

import pytest

# modules whose jobs (aggregate, plots of tables, index/split/pack/screen, config checks) need no network
TORCH_FREE = ["emkt.config", "emkt.scores", "emkt.config_reference", "emkt.tables", "emkt.headline", "emkt.plots", "emkt.indexing",
              "emkt.store", "emkt.screening", "emkt.data", "emkt.synthetic", "emkt.cluster", "emkt.selection"]

# one interpreter imports them in turn and notes the first that brought torch or MONAI in
PROBE = """
import importlib, json, sys
culprits = []
for name in sys.argv[1:]:
    importlib.import_module(name)
    if {"torch", "monai"} & set(sys.modules):
        culprits.append(name)
        break
print(json.dumps(culprits))
"""


@pytest.mark.slow
def test_table_and_data_modules_import_without_torch():
    out = subprocess.run([sys.executable, "-c", PROBE, *TORCH_FREE], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"imports torch or MONAI: {out.stdout.strip()}"
