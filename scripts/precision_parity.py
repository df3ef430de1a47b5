"""Does bf16 training reach the fp32 model's mAP? Trains the default job's models (mobilereid/configs/default.toml:
the `[models.*]` chains `make run` trains, same epochs and hyper-parameters) on the default synthetic set with
``--precision fp32`` and ``bf16`` for several seeds, and compares the final mAP of each pair (same seed, same epochs)
with the spread between seeds at fp32 — the run-to-run noise the goal of issue 28 measures against.

    python scripts/precision_parity.py --data runs/default/data/synth --seeds 0,1,2 --out runs/precision \\
        --results docs/results

``--data``: a synthetic set made by `mobilereid data synth` (or a `make run` work folder's data/synth).
Writes parity.json and parity.md into --out (and a dated copy of the table into --results). One thread per run:
the numbers are accuracies, not timings, and the step times it prints are for orientation only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mobilereid.host import measurement_stamp, write_results_file
from mobilereid.options import TrainConfig
from mobilereid.pipeline import load_config
from mobilereid.train import train


def run_one(chain: str, section: dict, precision: str, seed: int, data: Path, out: Path, device: str) -> dict:
    cfg = TrainConfig(**{**section, "precision": precision, "seed": seed, "device": device, "threads": 1})
    result = train(cfg, data, out / f"{chain}_{precision}_s{seed}")
    m = result["metrics"]
    return {
        "chain": chain,
        "model": section["model"],
        "precision": precision,
        "seed": seed,
        "epochs": cfg.epochs,
        "mAP": m["mAP"],
        "rank1": m["rank1"],
        "final_loss": result["history"][-1]["loss"],
        "train_seconds": sum(r["seconds"] for r in result["history"]),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per chain: fp32 and bf16 mean/std over seeds, the mean paired difference, and whether |difference| is
    within the fp32 seed spread (max − min) — the noise of a rerun with another seed."""
    out = []
    for chain in dict.fromkeys(r["chain"] for r in rows):
        mine = [r for r in rows if r["chain"] == chain]
        by = {p: {r["seed"]: r["mAP"] for r in mine if r["precision"] == p} for p in ("fp32", "bf16")}
        seeds = sorted(set(by["fp32"]) & set(by["bf16"]))
        if not seeds:
            continue
        fp32 = [by["fp32"][s] for s in seeds]
        bf16 = [by["bf16"][s] for s in seeds]
        diffs = [b - f for b, f in zip(bf16, fp32)]
        spread = max(fp32) - min(fp32)
        mean_diff = statistics.fmean(diffs)
        out.append(
            {
                "chain": chain,
                "seeds": seeds,
                "fp32_mean": statistics.fmean(fp32),
                "fp32_std": statistics.pstdev(fp32),
                "bf16_mean": statistics.fmean(bf16),
                "bf16_std": statistics.pstdev(bf16),
                "paired_diff_mean": mean_diff,
                "paired_diffs": diffs,
                "fp32_seed_spread": spread,
                "within_noise": abs(mean_diff) <= spread if len(seeds) > 1 else None,
            }
        )
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    lines = [
        "| chain | model | seed | precision | epochs | mAP | Rank-1 | final loss | train s (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['chain']} | {r['model']} | {r['seed']} | {r['precision']} | {r['epochs']} | {100 * r['mAP']:.2f} | "
            f"{100 * r['rank1']:.2f} | {r['final_loss']:.3f} | {r['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "| chain | seeds | fp32 mAP mean ± std | bf16 mAP mean ± std | bf16 − fp32 (paired, mean) | fp32 seed spread "
        "(max − min) | within noise |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['chain']} | {', '.join(map(str, s['seeds']))} | "
            f"{100 * s['fp32_mean']:.2f} ± {100 * s['fp32_std']:.2f} | "
            f"{100 * s['bf16_mean']:.2f} ± {100 * s['bf16_std']:.2f} | {100 * s['paired_diff_mean']:+.2f} "
            f"({', '.join(f'{100 * d:+.2f}' for d in s['paired_diffs'])}) | {100 * s['fp32_seed_spread']:.2f} | "
            f"{'yes' if s['within_noise'] else 'no' if s['within_noise'] is not None else 'one seed'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--chains", default="sclnet,vit", help="[models.NAME] chains of the default job")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, default=None, help="also write a dated table here (docs/results)")
    args = ap.parse_args()
    job = load_config(None)
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for chain in args.chains.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for precision in ("fp32", "bf16"):
                rows.append(run_one(chain, job["models"][chain], precision, seed, args.data, args.out, args.device))
                summary = summarise(rows)
                (args.out / "parity.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
                print(markdown(rows, summary), flush=True)
    table = markdown(rows, summarise(rows))
    (args.out / "parity.md").write_text(table)
    if args.results:
        stamp = measurement_stamp()
        head = (
            f"# bf16 vs fp32 training on the synthetic set ({stamp['date']}, commit {stamp['commit']}, "
            f"{stamp['host_cpu']})\n\n`python scripts/precision_parity.py --data DATA --seeds {args.seeds} --chains "
            f"{args.chains} --device {args.device} --out OUT`; DATA is the default job's synthetic set "
            "(`mobilereid data synth`, seed 0, 100 identities). Models, epochs and hyper-parameters of "
            "mobilereid/configs/default.toml; one CPU thread per run.\n\n"
        )
        print(write_results_file(args.results, "precision-parity", stamp, head + table))


if __name__ == "__main__":
    main()
