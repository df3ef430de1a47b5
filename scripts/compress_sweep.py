"""GMAC-vs-mAP sweep of the ViT compression techniques, each alone and combined, from one trained checkpoint.

Every variant gets the same fine-tuning budget (``--budget`` epochs, distillation from the unpruned model, the
compress defaults otherwise): the epochs a variant's steps do not use go to its final fine-tuning, so a variant is
never ahead just because it trained longer. The "fine-tuned baseline" spends the whole budget on the unpruned model
and is the reference for the goal of issue 16 (<= 0.55x its executed GMACs at <= 1.0 point mAP loss; issue #4 asked
for <= 0.6x).

    python scripts/compress_sweep.py --checkpoint runs/default/train_vit/model.pt --data runs/default/data/synth \\
        --out runs/compress_sweep

Writes sweep.json, sweep.md (the table) and sweep.png (executed GMAC vs mAP) into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilereid.compress.pipeline import CompressConfig, compress
from mobilereid.report import save_plot

VARIANTS = {
    "fine-tuned baseline": {},
    "patch keep 0.75": {"keep_ratio": 0.75},
    "patch keep 0.6": {"keep_ratio": 0.6},
    "2 windows from block 6": {"windows": 2, "window_start": 6},
    "heads -25%": {"head_rate": 0.25},
    "heads -40%": {"head_rate": 0.4},
    "K/V tokens -20%": {"token_rate": 0.2},
    "K/V tokens -40%": {"token_rate": 0.4},
    "combined (keep .75, heads .25, K/V .2)": {"keep_ratio": 0.75, "head_rate": 0.25, "token_rate": 0.2},
    "combined (keep .6, heads .4, K/V .4)": {"keep_ratio": 0.6, "head_rate": 0.4, "token_rate": 0.4},
    "AMG only (heads .4, K/V .6)": {"head_rate": 0.4, "token_rate": 0.6},
    "patch keep 0.75, contrast scorer": {"keep_ratio": 0.75, "scorer": "contrast"},
    "combined (keep .75 contrast, heads .4, K/V .6)": {
        "keep_ratio": 0.75,
        "scorer": "contrast",
        "head_rate": 0.4,
        "token_rate": 0.6,
    },
    "MLP units -25%": {"mlp_rate": 0.25},
    "MLP units -50%": {"mlp_rate": 0.5},
    "combined + MLP -25% (keep .75 contrast, heads .4, K/V .6)": {
        "keep_ratio": 0.75,
        "scorer": "contrast",
        "head_rate": 0.4,
        "token_rate": 0.6,
        "mlp_rate": 0.25,
    },
    "combined + MLP -40% (keep .75 contrast, heads .4, K/V .6)": {
        "keep_ratio": 0.75,
        "scorer": "contrast",
        "head_rate": 0.4,
        "token_rate": 0.6,
        "mlp_rate": 0.4,
    },
}


GOAL_GMAC_RATIO = 0.55  # issue 16: <= 0.55x the fine-tuned baseline's executed GMACs ...
GOAL_MAP_LOSS = 1.0  # ... at <= 1.0 mAP point below it
SEED_FIGURES = {  # quoted from issue 16 (the seed project's own measurements), not re-measured by this script
    "seed: patch elimination + windows (quoted)": -12.2,
    "seed: AMG (quoted)": -29.4,
}


def config_for(opts: dict, budget: int) -> CompressConfig:
    """The pipeline's default schedule (2 architecture epochs, 2 rounds x 2 epochs of heads, 1 token epoch), with
    whatever the variant does not use moved to the final fine-tuning so every variant trains ``budget`` epochs."""
    cfg = CompressConfig(rounds=2, epochs_per_round=2, arch_epochs=2, token_epochs=1, lr=1e-4, **opts)
    used = (
        (cfg.arch_epochs if (cfg.keep_ratio is not None or cfg.windows is not None) else 0)
        + (cfg.rounds * cfg.epochs_per_round if cfg.head_rate > 0 else 0)
        + (cfg.token_epochs if cfg.token_rate > 0 else 0)
        + (cfg.mlp_epochs if cfg.mlp_rate > 0 else 0)
    )
    if used > budget:
        raise SystemExit(f"--budget {budget} is smaller than the {used} epochs this schedule needs")
    cfg.final_epochs = budget - used
    return cfg


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows["fine-tuned baseline"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.axvspan(0, GOAL_GMAC_RATIO * base["gmacs"], ymin=0, ymax=1, color="#e8f5e9", zorder=0)
    ax.axhline(100 * base["mAP"] - GOAL_MAP_LOSS, color="#2e7d32", ls="--", lw=1)
    ax.text(
        GOAL_GMAC_RATIO * base["gmacs"],
        100 * base["mAP"] - GOAL_MAP_LOSS,
        f"  goal: <= {GOAL_GMAC_RATIO:.0%} of baseline GMAC, >= baseline mAP - {GOAL_MAP_LOSS:g}",
        color="#2e7d32",
        fontsize=8,
        va="bottom",
        ha="right",
    )
    for name, r in rows.items():
        kind = "o" if name == "fine-tuned baseline" else ("*" if name.startswith("combined") else "s")
        ax.scatter(r["gmacs"], 100 * r["mAP"], marker=kind, s=90 if kind == "*" else 50, zorder=3)
        ax.annotate(name, (r["gmacs"], 100 * r["mAP"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    save_plot(
        fig,
        ax,
        path,
        "executed GMAC per image (FlopCounterMode)",
        "mAP (%)",
        "ViT compression: executed GMAC vs mAP (same fine-tuning budget)",
        legend=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", type=Path, required=True, help="a trained ViT checkpoint (e.g. vit_tiny from the pipeline)"
    )
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/compress_sweep"))
    ap.add_argument("--budget", type=int, default=10, help="fine-tuning epochs per variant")
    ap.add_argument("--only", nargs="*", help="run only these variants (names as in the table)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "sweep.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, opts in VARIANTS.items():
        if (args.only and name not in args.only) or name in rows:
            continue
        folder = args.out / "".join(c if c.isalnum() else "_" for c in name)
        r = compress(args.checkpoint, args.data, folder, config_for(opts, args.budget))
        rows[name] = {
            "gmacs": r["after"]["gmacs"],
            "params": r["after"]["params"],
            "rank1": r["after"]["rank1"],
            "mAP": r["after"]["mAP"],
            "mINP": r["after"]["mINP"],
            "unpruned": r["before"],
            "seconds": r["seconds"],
            "heads": r["after"]["heads_per_layer"],
            "kv_tokens": r["after"]["kv_tokens_per_layer"],
            "mlp_hidden": r["after"].get("mlp_hidden_per_layer"),
        }
        results_path.write_text(json.dumps(rows, indent=2))
    if "fine-tuned baseline" not in rows:
        raise SystemExit("the fine-tuned baseline has not been run yet")
    base = rows["fine-tuned baseline"]
    lines = [
        "| variant | executed GMAC | vs baseline | params (M) | Rank-1 | mAP | ΔmAP | mINP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['gmacs']:.4f} | {100 * (r['gmacs'] / base['gmacs'] - 1):+.1f}% | {r['params'] / 1e6:.2f} | "
            f"{100 * r['rank1']:.1f}% | {100 * r['mAP']:.2f}% | {100 * (r['mAP'] - base['mAP']):+.2f} | "
            f"{100 * r['mINP']:.2f}% |"
        )
    for name, change in SEED_FIGURES.items():
        lines.append(f"| {name} | — | {change:+.1f}% | — | — | — | — | — |")
    u = base["unpruned"]
    lines.append(
        f"\nunpruned checkpoint before fine-tuning: {u['gmacs']:.4f} GMAC, "
        f"Rank-1 {100 * u['rank1']:.1f}%, mAP {100 * u['mAP']:.2f}%"
    )
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out / "sweep.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
