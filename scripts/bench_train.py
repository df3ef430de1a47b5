"""Training and embedding throughput of the learning stages, per model, on one device and precision.

    python scripts/bench_train.py [--device auto] [--precision bf16] [--models sclnet,vit_base,...]
        [--steps 20] [--warmup 5] [--workers N] [--peak-tflops X] [--out runs/bench_train]

For each model (sclnet, sclnet_small, vit_small, vit_base, vit_base_s12_sie_jpm = TransReID's stride-12 ViT-B
with SIE and JPM) at 256x128, in a process of its own (so peak memory is that model's): training steps exactly as
`mobilereid train` runs them (PK batches of 16 x 4 from a `PKLoader` over a synthetic set, Adam, the ReID loss,
autocast, fused attention), timed after ``--warmup`` steps with the decoded-image cache already filled (an epoch
after the first, as in a real run); the step split into data wait (the training loop blocked on the loader) and the
rest; peak memory (CUDA: allocated; CPU: the process's peak RSS); embedding throughput (batches already on the
device, no decode: the model's own speed in eval mode).

Decoding and augmentation: one core's rate of each is measured on the same images, so the table says whether the
host can feed the device (images/s needed vs ``workers`` x per-core rate).

MFU (model FLOPs utilisation) = 3 x forward FLOPs per image (2 x the MACs of `mobilereid.flops.count_macs`, the
usual forward + 2 x backward estimate) x training images/s / the device's peak. The peak is ``--peak-tflops`` when
given; for known GPUs the dense tensor-core figure of the data sheet for the precision (H100/H200 SXM: 989 TFLOPS
bf16/fp16, 495 TF32; A100: 312 / 156); on a CPU the best rate of a 2048 x 2048 matmul measured here in the
precision (named "measured matmul" in the output: a CPU has no single data-sheet number). Prints a table; writes
``bench_train.json`` and ``bench_train.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {  # name: (preset, model options, batch P x K)
    "sclnet": ("sclnet", {}, (16, 4)),
    "sclnet_small": ("sclnet_small", {}, (16, 4)),
    "vit_small": ("vit_small", {}, (16, 4)),
    "vit_base": ("vit_base", {}, (16, 4)),
    "vit_base_s12_sie_jpm": ("vit_base", {"stride": 12, "camera_num": 6, "jpm": True}, (16, 4)),
}
GPU_PEAK_TFLOPS = {  # dense tensor-core peaks from the vendors' data sheets (SXM parts), by precision
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}
IDS = 64  # synthetic identities: 32 train identities, enough for P = 16 batches


def gpu_peak(name: str, precision: str) -> float | None:
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision]
    return None


def cpu_matmul_peak(precision: str) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    best = float("inf")
    for _ in range(8):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e12


def per_core_rates(images) -> dict:
    """Images/s on this one core: decode + resize of every image (which fills the decoded-image cache), then
    normalise + augment + to-tensor of cached images (what each step's loader work is once the cache is warm)."""
    t0 = time.perf_counter()
    for i in range(len(images)):
        images.resized(i)
    decode = len(images) / (time.perf_counter() - t0)
    n = min(256, len(images))
    t0 = time.perf_counter()
    for i in range(n):
        images[(i, f"rate:{i}")]
    return {"decode": decode, "augment": n / (time.perf_counter() - t0)}


def bench_one(name: str, data: Path, args) -> dict:
    """One model: run in its own process (see main)."""
    import torch

    from mobilereid.compute import activate, peak_memory_bytes, resolve
    from mobilereid.data.datasets import load_dataset
    from mobilereid.data.torchdata import PKBatches, PKLoader, ReIDImages
    from mobilereid.embeddings import preprocess_spec_for
    from mobilereid.flops import count_macs
    from mobilereid.models.registry import build_model
    from mobilereid.models.vit import fused_attention
    from mobilereid.train import lr_at, train_one_epoch

    preset, options, (p, k) = MODELS[name]
    compute = resolve(args.device, args.precision, args.workers)
    activate(compute)
    torch.manual_seed(0)
    ds = load_dataset(data)
    labels = ds.train_labels()
    model = build_model(preset, num_classes=len(labels), **options)
    macs = count_macs(model)
    model = model.to(compute.device)
    spec = preprocess_spec_for(model)
    images = ReIDImages(ds.train, spec, labels, augment=True)
    rates = per_core_rates(images)  # fills the decoded-image cache as a side effect: timed steps see a warm cache
    loader = PKLoader(images, PKBatches(ds.train, p, k, 0), 0, compute.workers, pin=compute.cuda)
    batches = itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=3.5e-4, weight_decay=5e-4)
    scaler = compute.scaler()
    uses_cam = getattr(model.cfg, "camera_num", 0) > 0
    step = lambda n: train_one_epoch(
        model,
        itertools.islice(batches, n),
        opt,
        lambda i: lr_at(i, 1000, 0, 3.5e-4),  # noqa: E731
        uses_cam,
        compute=compute,
        scaler=scaler,
    )
    step(args.warmup)
    if compute.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(compute.device)
    timed = step(args.steps)  # ends on a host read of the summed loss: the device has finished
    batch = p * k
    train_ips = args.steps * batch / timed["seconds"]

    model.eval()
    eb = args.embed_batch or (256 if compute.cuda else 64)
    x = torch.randn(eb, 3, spec.height, spec.width, device=compute.device)
    cam = torch.zeros(eb, dtype=torch.long, device=compute.device) if uses_cam else None
    run = (lambda: model(x, cam)) if uses_cam else (lambda: model(x))  # noqa: E731
    with torch.no_grad(), compute.autocast(), fused_attention(model):
        for _ in range(2):
            run()
        if compute.cuda:
            torch.cuda.synchronize()
        n_embed = max(3, args.steps // 2)
        t0 = time.perf_counter()
        for _ in range(n_embed):
            out = run()
        float(out.float().sum())
        embed_ips = n_embed * eb / (time.perf_counter() - t0)

    if compute.cuda:
        peak = gpu_peak(torch.cuda.get_device_name(compute.device), args.precision)
        peak_kind = "data sheet, dense"
    else:
        peak, peak_kind = cpu_matmul_peak(args.precision), "measured matmul"
    peak = args.peak_tflops or peak
    peak_kind = "given (--peak-tflops)" if args.peak_tflops else peak_kind
    train_flops_per_image = 3 * 2 * macs
    return {
        "model": name,
        "preset": preset,
        "options": options,
        "batch": batch,
        "input": f"{spec.height}x{spec.width}",
        "device": str(compute.device),
        "device_name": compute.record().get("device_name", "cpu"),
        "precision": args.precision,
        "workers": compute.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "train_images_per_s": train_ips,
        "step_ms": 1000 * timed["seconds"] / args.steps,
        "data_wait_ms": 1000 * timed["data_wait"] / args.steps,
        "data_wait_share": timed["data_wait"] / timed["seconds"],
        "embed_images_per_s": embed_ips,
        "embed_batch": eb,
        "peak_memory_bytes": peak_memory_bytes(compute),
        "forward_gmacs_per_image": macs / 1e9,
        "train_tflops_per_s": train_flops_per_image * train_ips / 1e12,
        "peak_tflops": peak,
        "peak_kind": peak_kind,
        "mfu": None if not peak else train_flops_per_image * train_ips / (peak * 1e12),
        "decode_images_per_s_per_core": rates["decode"],
        "augment_images_per_s_per_core": rates["augment"],
        "threads": torch.get_num_threads(),
    }


def markdown(meta: dict, rows: list[dict]) -> str:
    head = (
        f"# Training throughput ({meta['date']}, commit {meta['commit']})\n\n"
        f"Device: {meta['device']}; host CPU: {meta['host_cpu']}; torch {meta['torch']}.\n\n"
        "| model | precision | batch | train img/s | step ms | data wait | embed img/s | peak mem | fwd GMACs | "
        "TFLOP/s | MFU (peak) | decode / augment img/s per core |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {meta['precision']} | - | failed: {r['error']} |  |  |  |  |  |  |  |  |")
            continue
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "-"
        mfu = (
            f"{r['mfu']:.1%} ({r['peak_tflops']:.1f} TFLOPS, {r['peak_kind']})"
            if r["mfu"] is not None
            else "- (no peak known)"
        )
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['train_images_per_s']:.1f} | {r['step_ms']:.0f} | "
            f"{r['data_wait_ms']:.1f} ms ({r['data_wait_share']:.1%}) | {r['embed_images_per_s']:.1f} | {mem} | "
            f"{r['forward_gmacs_per_image']:.2f} | {r['train_tflops_per_s']:.2f} | {mfu} | "
            f"{r['decode_images_per_s_per_core']:.0f} / {r['augment_images_per_s_per_core']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--workers", type=int, default=None, help="input workers (default: compute.py's)")
    ap.add_argument("--embed-batch", type=int, default=0, help="embedding batch (default 256 on CUDA, 64 on the CPU)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: see the docstring)"
    )
    ap.add_argument("--data", type=Path, default=None, help="a dataset folder (default: a synthetic set made here)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    ap.add_argument("--results", type=Path, help="also write DIR/<date>-<commit>-<host>-bench-train.md (docs/results)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one model, in a child process
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if args.one:
        args.result.write_text(json.dumps(bench_one(args.one, args.data, args)))
        return

    import torch

    from mobilereid.compute import resolve
    from mobilereid.data.synth import SynthConfig, generate
    from mobilereid.host import measurement_stamp, write_results_file

    compute = resolve(args.device, args.precision, args.workers)  # a bad device: one line before any work
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synth"
            generate(data, SynthConfig(ids=IDS, cameras=6, seed=0))
        rows = []
        for name in names:
            result = Path(tmp) / f"{name}.json"
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--result",
                str(result),
                "--data",
                str(data),
                "--device",
                args.device,
                "--precision",
                args.precision,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--embed-batch",
                str(args.embed_batch),
                *(["--workers", str(args.workers)] if args.workers is not None else []),
                *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []),
            ]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not result.is_file():
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
                rows.append({"model": name, "error": tail})
                print(f"{name}: failed ({tail})", file=sys.stderr)
                continue
            rows.append(json.loads(result.read_text()))
            print(
                f"{name}: {rows[-1]['train_images_per_s']:.1f} train img/s ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
    stamp = measurement_stamp(Path(__file__).parent)
    meta = {
        **stamp,
        "torch": torch.__version__,
        "device": compute.describe(),
        "precision": args.precision,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(meta, rows)
    for stem, text in (("bench_train.json", json.dumps({**meta, "rows": rows}, indent=2)), ("bench_train.md", md)):
        tmp_path = args.out / f".{stem}.tmp"
        tmp_path.write_text(text)
        os.replace(tmp_path, args.out / stem)
    print(md)
    if args.results:
        print(f"results file: {write_results_file(args.results, 'bench-train', stamp, md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
