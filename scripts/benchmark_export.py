"""Side-by-side export benchmark: size, latency (median, p90) and cosine to float for every runtime and precision.

    python scripts/benchmark_export.py --data DATA --ckpt runs/default/train_sclnet/model.pt \
        --ckpt runs/default/compress/compressed.pt --out runs/bench_export [--threads 2] [--runs 100]

For each checkpoint: exports ONNX, ExecuTorch (fp32 + the recipe's int8 variants: dynamic and static for ViTs) with the
default recipes and TFLite fp32, dynamic, full int8 and int16x8 (for every family, with the drift gate off: drift is
measured here, not enforced), then times torch fp32 and every artifact **in one process, on the same preprocessed image,
with the same thread count**, in interleaved blocks (so a load change on a shared machine hits every runtime alike). The
CPU model and its int8 dot-product extensions are recorded: whether int8 beats fp32 on a CPU depends on them. Ratios
(INT8 size / fp32 size, INT8 latency / fp32 latency of the same runtime) are computed from numbers measured side by side
in this run. For LiteRT rows the file's bytes are broken down by role (weights, biases, per-channel quantization
parameters, graph; ``mobilereid.export.tflite.size``), and the XNNPACK partitions and the ops left outside them are read
from the interpreter; for ExecuTorch from the sidecar's delegation report. Writes ``benchmark.json`` and
``benchmark.md``; prints the table. Latency is host-CPU latency, not a phone's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mobilereid.embeddings import preprocess_spec_for
from mobilereid.export import export_checkpoint
from mobilereid.export.calibration import calibration_files, load_batch
from mobilereid.export.tflite.delegation import delegation_report
from mobilereid.export.tflite.size import breakdown_line, size_breakdown
from mobilereid.host import measurement_stamp, write_results_file
from mobilereid.models.checkpoint import load_checkpoint
from mobilereid.report import write_rows_table
from mobilereid.runtimes import open_runner


def timed_interleaved(fns: list, runs: int, warmup: int = 5, rounds: int = 5) -> list[np.ndarray]:
    """Milliseconds per call of each function, timed in ``rounds`` rounds; in each round every function runs a block
    of ``runs // rounds`` timed calls after ``warmup`` untimed ones. A change in machine load during the benchmark
    then hits every runtime alike, while each block still runs warm: timing one call of each in turn was measured
    2-3x slower for every runtime (each runtime's worker threads and caches were disturbed by the previous one)."""
    block = max(1, runs // rounds)
    out = [[] for _ in fns]
    for _ in range(rounds):
        for fn, times in zip(fns, out):
            for _ in range(warmup):
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
    return [np.asarray(t) for t in out]


def bench_checkpoint(ckpt: Path, data: Path, out: Path, threads: int, runs: int) -> list[dict]:
    dest = out / ckpt.parent.name
    results = export_checkpoint(ckpt, "onnx,executorch", data, dest, int8=True, threads=threads)
    # every LiteRT variant, whatever the family's default recipe ships (a ViT's default leaves full int8 out because
    # it drifts): the benchmark measures drift, it does not gate on it
    measure_all = dest / "recipe_tflite_benchmark.toml"
    measure_all.parent.mkdir(parents=True, exist_ok=True)
    measure_all.write_text(
        'target = "tflite"\nvariants = ["fp32", "dynamic", "int8", "int16x8"]\n\n[verify]\nmin_cosine = -1.0\n'
    )
    results += export_checkpoint(ckpt, "tflite", data, dest, int8=True, recipe_path=measure_all, threads=threads)
    model, _ = load_checkpoint(ckpt)
    spec = preprocess_spec_for(model)
    _, verify = calibration_files(data, 1, 1)
    x = load_batch(verify[:1], spec)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    runners = [open_runner(r["artifact"], threads=threads) for r in results]
    prepared = [runner.prepare(x[0]) for runner in runners]

    def torch_fp32():
        with torch.no_grad():
            model(xt)

    calls = [torch_fp32] + [lambda runner=runner, p=p: runner.run_prepared(p) for runner, p in zip(runners, prepared)]
    times = timed_interleaved(calls, runs)
    fp32_params = sum(p.numel() for n, p in model.state_dict().items() if "classifier" not in n) * 4
    rows = [
        {
            "model": ckpt.parent.name,
            "runtime": "torch",
            "precision": "fp32",
            "size_mb": fp32_params / 1e6,
            "p50_ms": float(np.median(times[0])),
            "p90_ms": float(np.percentile(times[0], 90)),
            "cosine_mean": 1.0,
        }
    ]
    for r, runner, ms in zip(results, runners, times[1:]):
        row = {
            "model": ckpt.parent.name,
            "runtime": runner.meta["runtime"],
            "precision": r["precision"],
            "artifact": r["artifact"].name,
            "size_mb": r["artifact"].stat().st_size / 1e6,
            "p50_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)),
            "cosine_mean": r["verification"]["cosine_mean"],
            "cosine_min": r["verification"]["cosine_min"],
        }
        if hasattr(runner, "interp"):  # LiteRT: which ops XNNPACK took, which ran on LiteRT's own kernels
            d = delegation_report(runner.interp)
            row.update(
                partitions=d["partitions"],
                cpu_ops=dict(d["cpu_ops"]),
                size_breakdown=size_breakdown(r["artifact"].read_bytes()),
            )
        elif "delegation" in runner.meta:  # ExecuTorch: XNNPACK subgraphs and the ops left on portable kernels
            deleg = runner.meta["delegation"]
            row.update(
                partitions=deleg.get("delegated_subgraphs"),
                cpu_ops={k: v["not_delegated"] for k, v in deleg.get("ops", {}).items() if v["not_delegated"]},
            )
        rows.append(row)
    by = {(r["runtime"], r["precision"]): r for r in rows}
    for r in rows:
        base = by.get((r["runtime"], "fp32"))
        if base and r["precision"] != "fp32":
            r["size_vs_fp32"] = r["size_mb"] / base["size_mb"]
            r["latency_vs_fp32"] = r["p50_ms"] / base["p50_ms"]
    return rows


def markdown(rows: list[dict], threads: int, runs: int, cpu: str) -> str:
    lines = [
        f"Host CPU ({cpu}), {threads} threads, batch 1, {runs} timed runs per runtime in 5 interleaved blocks "
        "(5 warm-up runs before each), same image for all.",
        "",
        "| model | runtime | precision | MB | size vs fp32 | p50 ms | p90 ms | latency vs fp32 | cosine mean | "
        "cosine min | delegate partitions | ops outside the delegate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cpu = ", ".join(f"{k} x{v}" for k, v in sorted(r.get("cpu_ops", {}).items(), key=lambda kv: -kv[1])) or "-"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['precision']} | {r['size_mb']:.2f} | "
            f"{r.get('size_vs_fp32', float('nan')):.2f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r.get('latency_vs_fp32', float('nan')):.2f} | {r['cosine_mean']:.4f} | {r.get('cosine_min', 1.0):.4f} | "
            f"{r.get('partitions', '-')} | {cpu} |"
        )
    lines += ["", "Where the bytes of each LiteRT model go (from the flatbuffer):", ""]
    lines += [
        f"- {r['model']} {r['precision']}: {breakdown_line(r['size_breakdown'])}" for r in rows if "size_breakdown" in r
    ]
    return "\n".join(lines).replace("| nan |", "| - |") + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_export"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument(
        "--results", type=Path, help="also write DIR/<date>-<commit>-<host>-export-benchmark.md (docs/results)"
    )
    args = ap.parse_args()
    rows = []
    for ckpt in args.ckpt:
        rows += bench_checkpoint(ckpt, args.data, args.out, args.threads, args.runs)
    stamp = measurement_stamp(Path(__file__).parent)
    cpu = stamp["host_cpu"]
    md = markdown(rows, args.threads, args.runs, cpu)
    write_rows_table(args.out, "benchmark", {"threads": args.threads, "runs": args.runs, "cpu": cpu, **stamp}, rows, md)
    if args.results:
        print(f"results file: {write_results_file(args.results, 'export-benchmark', stamp, md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
