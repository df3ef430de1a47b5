"""Floor numbers for a dataset: colour-histogram baseline and random-weight networks (no training).

python scripts/floors.py DATA_DIR [--out floors.json]
"""

import argparse
import json
import time

import torch

from mobilereid.baselines import histogram_features
from mobilereid.data.datasets import load_dataset
from mobilereid.embeddings import evaluate_model, rank_metrics
from mobilereid.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("--out", default=None)
ap.add_argument("--models", nargs="*", default=["sclnet", "vit_tiny"])
args = ap.parse_args()
ds = load_dataset(args.data)
rows = {}
t = time.perf_counter()
rows["colour histogram (6 stripes, 8x8x8 RGB)"] = rank_metrics(
    histogram_features(ds.query), histogram_features(ds.gallery), ds
)
for name in args.models:
    torch.manual_seed(0)
    rows[f"{name} random init"] = evaluate_model(build_model(name).eval(), ds)
print("| method | Rank-1 | Rank-5 | mAP | mINP |\n|---|---|---|---|---|")
for k, m in rows.items():
    print(f"| {k} | {m['rank1']:.1%} | {m['rank5']:.1%} | {m['mAP']:.1%} | {m['mINP']:.1%} |")
if args.out:
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
