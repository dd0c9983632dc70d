"""The teachers of a finished run as proofreaders on a labelled folder its networks never saw (issue 21):
emkt.proofread.evaluate_proofreading per seed (what evaluate_external runs), emkt.review.proofreading_table
over seeds. Usage: python studies/proofread_checkpoints.py RUN_DIR LABELLED_DIR SEEDS STUDENTS STAGES POS_WEIGHT
MIN_OBJECT_SIZE OUT_PREFIX, e.g. study/real-em-unet ext 0,1,2 baseline,joint,expanded_anchored pretrained,joint 3.0 64 out
(docs/results/2026-12-02-proofreading.md)."""
import sys, time
from pathlib import Path

import pandas as pd
import torch

from emkt.checkpoints import load_model
from emkt.data import load_folder_images
from emkt.evaluation_jobs import network_probabilities
from emkt.indexing import build_index
from emkt.proofread import evaluate_proofreading
from emkt.review import proofreading_markdown, proofreading_table

torch.set_num_threads(1)
run, external, seeds, students, stages, pos_weight, min_size, out = sys.argv[1:9]
seeds = [int(s) for s in seeds.split(",")]
index, _ = build_index(Path(external), None)
index = index[index["set"] == "labelled"].reset_index(drop=True)
items = load_folder_images(index)
print(len(items), "images", flush=True)
ev = {"overlap": 0.25, "batch_size": 16}
device = torch.device("cpu")
longs, curves = [], []
for seed in seeds:
    t = time.time()
    probs = {c: network_probabilities(*load_model(f"{run}/results/models/student_{c}_{seed}.pth"), items, ev, device)
             for c in students.split(",")}
    teachers = {s: load_model(f"{run}/results/models/teacher_{s}_{seed}.pth")[0] for s in stages.split(",")}
    size = load_model(f"{run}/results/models/teacher_{stages.split(',')[0]}_{seed}.pth")[1]["input_size"]
    long, curve = evaluate_proofreading(teachers, size, items, probs, dataset=Path(external).name, seed=seed,
                                        overlap=0.25, batch_size=16, device=device, pos_weight=float(pos_weight),
                                        threshold=0.5, min_size=int(min_size))
    longs.append(long); curves.append(curve)
    print("seed", seed, time.time() - t, flush=True)
long = pd.concat(longs, ignore_index=True)
long.to_csv(f"{out}_long.csv", index=False)
pd.concat(curves).to_csv(f"{out}_curves.csv", index=False)
table = proofreading_table(long)
table.to_csv(f"{out}_table.csv", index=False)
Path(f"{out}.md").write_text(proofreading_markdown(table))
print(proofreading_markdown(table))
