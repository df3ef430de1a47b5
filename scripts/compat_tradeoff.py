"""Compatibility trade-off of the two stages that change the user's model: compress (ViT) and quant-finetune
(SCL-net), each run at several ``compat_weight`` values from the same trained checkpoint with the default job's
settings (mobilereid/configs/default.toml), then exported to ExecuTorch INT8 and scored by `mobilereid evaluate`
against the user's float model.

Per weight: the stage's float model (own mAP, cosine to the user's model, mixed-search mAP: its queries against a
gallery the user's model enrolled) and its INT8 artifact (own mAP, drift against the stage's float model, cosine
and mixed-search mAP against the user's model).

    python scripts/compat_tradeoff.py --workdir runs/default --weights 0,3,10,30 --out runs/compat \\
        --results docs/results

``--workdir``: a `make run` work folder (its data/synth, train_vit/model.pt and train_sclnet/model.pt).
Writes tradeoff.json and tradeoff.md into --out (and a dated copy of the table into --results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilereid.compress.pipeline import compress
from mobilereid.data.datasets import load_dataset
from mobilereid.embeddings import extract_features, preprocess_spec_for
from mobilereid.evaluate import evaluate_artifacts
from mobilereid.export import export_checkpoint
from mobilereid.host import measurement_stamp, write_results_file
from mobilereid.matching import compatibility
from mobilereid.metrics import rank_summary
from mobilereid.models.checkpoint import load_checkpoint
from mobilereid.options import CompressConfig, QuantFinetuneConfig
from mobilereid.pipeline import load_config
from mobilereid.quant_finetune import quant_finetune


def stage_config(cls, section: dict, **override):
    """A stage's config from the default job's checked section (`pipeline.load_config`), ``override`` laid over it."""
    return cls(**{**{k: v for k, v in section.items() if k != "model"}, **override})


def float_scores(model_path: Path, user_path: Path, ds) -> dict:
    """Own metrics of a float checkpoint and its compatibility with the user's checkpoint (torch, CPU)."""

    def embed(path):
        model, _ = load_checkpoint(path)
        model.eval()
        spec = preprocess_spec_for(model)
        return extract_features(model, ds.query, spec), extract_features(model, ds.gallery, spec)

    q, g = embed(model_path)
    uq, ug = embed(user_path)
    labels = (
        [s.pid for s in ds.query],
        [s.pid for s in ds.gallery],
        [s.camid for s in ds.query],
        [s.camid for s in ds.gallery],
    )
    own = rank_summary(q, g, *labels)
    return {"mAP": own["mAP"], "rank1": own["rank1"], **compatibility(q, ug, uq, g, *labels)}


def run_weight(family: str, weight: float, work: Path, out: Path, job: dict) -> dict:
    data = work / "data" / "synth"
    user = work / f"train_{family}" / "model.pt"
    folder = out / f"{family}_w{weight:g}"
    folder.mkdir(parents=True, exist_ok=True)
    if family == "vit":
        cfg = stage_config(CompressConfig, job["compress"], compat_weight=weight)
        stage = Path(compress(user, data, folder, cfg, evaluate=False)["checkpoint"])
    else:
        cfg = stage_config(QuantFinetuneConfig, job["quant_finetune"], compat_weight=weight)
        stage = folder / "model.pt"
        quant_finetune(user, data, stage, cfg)
    ds = load_dataset(data, need_train=False)
    row = {"family": family, "compat_weight": weight, "float": float_scores(stage, user, ds)}
    export_checkpoint(stage, "executorch", data, folder / "export", int8=True)
    artifact = next((folder / "export").glob("*_xnnpack_int8.pte"))
    report = evaluate_artifacts([artifact], data, folder / "evaluate", reference=stage, baseline=user, force=True)
    a = report["artifacts"][0]
    row["int8"] = {
        "mAP": a["metrics"]["mAP"],
        "verification": a["verification"],
        "cosine_to_stage": a["drift"]["cosine_mean"],
        "delta_mAP_to_stage": a["delta_mAP"],
        **a["compatibility"],
    }
    return row


def markdown(rows: list[dict], user_map: dict) -> str:
    lines = [
        "| model | compat weight | float mAP | float cosine to yours | float mixed mAP | INT8 mAP | INT8 ΔmAP vs "
        "its float | INT8 cosine to its float | INT8 cosine to yours | INT8 mixed mAP | INT8 own − mixed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, i = r["float"], r["int8"]
        lines.append(
            f"| {r['family']} (yours: mAP {100 * user_map[r['family']]:.2f}) | {r['compat_weight']:g} | "
            f"{100 * f['mAP']:.2f} | {f['cosine_mean']:.3f} | {100 * f['mixed_mAP']:.2f} | {100 * i['mAP']:.2f} | "
            f"{100 * i['delta_mAP_to_stage']:+.2f} | {i['cosine_to_stage']:.4f} | {i['cosine_mean']:.3f} | "
            f"{100 * i['mixed_mAP']:.2f} | {100 * (i['mAP'] - i['mixed_mAP']):+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--weights", default="0,3,10,30")
    ap.add_argument("--families", default="vit,sclnet")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, default=None, help="also write a dated table here (docs/results)")
    args = ap.parse_args()
    job = load_config(None)  # the default job, checked as the pipeline checks it
    rows, user_map = [], {}
    for family in args.families.split(","):
        ds = load_dataset(args.workdir / "data" / "synth", need_train=False)
        user = args.workdir / f"train_{family}" / "model.pt"
        user_map[family] = float_scores(user, user, ds)["mAP"]
        for w in (float(x) for x in args.weights.split(",")):
            rows.append(run_weight(family, w, args.workdir, args.out, job))
            (args.out / "tradeoff.json").write_text(json.dumps(rows, indent=2))
            print(markdown(rows, user_map), flush=True)
    table = markdown(rows, user_map)
    (args.out / "tradeoff.md").write_text(table)
    if args.results:
        stamp = measurement_stamp()
        head = (
            f"# Compatibility trade-off ({stamp['date']}, commit {stamp['commit']}, {stamp['host_cpu']})\n\n"
            f"`python scripts/compat_tradeoff.py --workdir WORK --weights {args.weights} --families "
            f"{args.families} --out OUT`; WORK is a `make run` work folder.\n\n"
        )
        print(write_results_file(args.results, "compat-tradeoff", stamp, head + table))


if __name__ == "__main__":
    main()
