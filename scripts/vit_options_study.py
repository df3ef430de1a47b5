"""Accuracy and executed GMACs of ViT options trained side by side with the same recipe and seed:
baseline, patch elimination (learned scorer / contrast scorer), windows, exact vs tanh GELU.

    python scripts/vit_options_study.py --data runs/default/data/synth --epochs 40 --out runs/vit_study
"""

import argparse
import json
from pathlib import Path

from mobilereid.flops import count_macs
from mobilereid.models.checkpoint import load_checkpoint
from mobilereid.train import TrainConfig, train

VARIANTS = {
    "baseline (tanh GELU)": {"gelu": "tanh"},
    "exact GELU": {"gelu": "exact"},
    "keep 0.7, learned scorer": {"gelu": "tanh", "keep_ratio": 0.7, "scorer": "learned"},
    "keep 0.7, contrast scorer": {"gelu": "tanh", "keep_ratio": 0.7, "scorer": "contrast"},
    "2 windows from block 6": {"gelu": "tanh", "windows": 2, "window_start": 6},
}

ap = argparse.ArgumentParser()
ap.add_argument("--data", type=Path, required=True)
ap.add_argument("--epochs", type=int, default=40)
ap.add_argument("--model", default="vit_tiny")
ap.add_argument("--img-size", type=int, nargs=2, default=[128, 64])
ap.add_argument("--out", type=Path, default=Path("runs/vit_study"))
args = ap.parse_args()
rows = {}
for name, opts in VARIANTS.items():
    out = args.out / name.replace(" ", "_").replace(",", "").replace(".", "")
    cfg = TrainConfig(
        model=args.model, epochs=args.epochs, lr=3e-4, p=16, k=4, model_options={"img_size": args.img_size, **opts}
    )
    result = train(cfg, args.data, out)
    model, _ = load_checkpoint(out / "model.pt")
    secs = sum(h["seconds"] for h in result["history"]) / len(result["history"])
    rows[name] = {**result["metrics"], "gmacs": count_macs(model) / 1e9, "seconds_per_epoch": secs}
    (args.out / "study.json").write_text(json.dumps(rows, indent=2))
print("| variant | Rank-1 | mAP | mINP | executed GMAC | s/epoch |\n|---|---|---|---|---|---|")
for name, r in rows.items():
    print(
        f"| {name} | {r['rank1']:.1%} | {r['mAP']:.1%} | {r['mINP']:.1%} | {r['gmacs']:.4f} | "
        f"{r['seconds_per_epoch']:.1f} |"
    )
