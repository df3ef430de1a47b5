#!/usr/bin/env python3
"""On-device ReID evaluator: embed a query/gallery set with one exported artifact and score it.

Runs with numpy, Pillow and one runtime (ai-edge-litert / tflite-runtime, the ExecuTorch runtime, onnxruntime or
tflite-micro): no torch (except the ExecuTorch binding's own need), no tensorflow, no mobilereid install. It
imports the *same* numpy modules the host uses (mobilereid.metrics, mobilereid.data.preprocess,
mobilereid.runtimes, mobilereid.data.datasets) from the folder above this file, which `mobilereid evaluate`
copies to the device together with this script.

    python mobilereid/device/evaluator.py --model model_int8.tflite --data DATASET_DIR --out results/ --threads 4

Writes ``results/<artifact>.npz`` (embeddings, labels, per-image latency) and ``results/<artifact>.summary.json``
(Rank-1/5/10, mAP, mINP, latency p50/p90/p99, throughput, runtime, threads, artifact sha256); ``--key NAME`` once
per ``--model`` names them instead (``mobilereid evaluate`` passes ``0-model.onnx``, ``1-model.onnx``, ...: two
artifacts may share a file name). Before each model it prints ``evaluating PATH`` on stderr, so that a runtime
crash (an abort or segfault in native code, which leaves no Python error line) can be pinned to the artifact.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the folder holding mobilereid/

import numpy as np  # noqa: E402

from mobilereid.data.datasets import load_dataset  # noqa: E402
from mobilereid.data.preprocess import PreprocessSpec, preprocess_file  # noqa: E402
from mobilereid.host import host_cpu  # noqa: E402
from mobilereid.metrics import rank_summary  # noqa: E402
from mobilereid.runtimes import open_runner, read_sidecar, runtime_version  # noqa: E402


def embed_split(
    runner, samples, spec: PreprocessSpec, warmup: int, log=None, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and per-image inference latency in ms (preprocessing excluded).

    ``flip``: test-time flip averaging, standard in ReID reports: the embedding is the mean of the image's and its
    horizontal mirror's embeddings (each as the artifact outputs it); the latency then counts both runs."""
    layout = "NCHW"
    embs, times = [], []
    for i, s in enumerate(samples):
        chw = preprocess_file(s.path, spec, layout)
        views = [chw, np.ascontiguousarray(chw[:, :, ::-1])] if flip else [chw]
        xs = [runner.prepare(v) for v in views]
        if i == 0:
            for _ in range(warmup):
                runner.run_prepared(xs[0])
        t0 = time.perf_counter()
        ys = [runner.run_prepared(x) for x in xs]
        times.append((time.perf_counter() - t0) * 1000.0)
        embs.append(np.mean([runner.finish(y)[0] for y in ys], axis=0))
        if log and (i + 1) % 200 == 0:
            log(f"  {i + 1}/{len(samples)}")
    return np.stack(embs).astype(np.float32), np.asarray(times)


def latency_summary(ms: np.ndarray) -> dict:
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_per_s": float(1000.0 / ms.mean()),
        "samples": int(len(ms)),
    }


def split_labels(ds) -> tuple[list, list, list, list]:
    """(query pids, gallery pids, query cameras, gallery cameras): what scoring and the results file need."""
    return (
        [s.pid for s in ds.query],
        [s.pid for s in ds.gallery],
        [s.camid for s in ds.query],
        [s.camid for s in ds.gallery],
    )


def evaluate_artifact(
    model: Path,
    data: Path,
    out: Path,
    threads: int = 2,
    warmup: int = 3,
    log=print,
    flip: bool = False,
    key: str | None = None,
    gallery_formats: tuple = (),
    gallery_sizes: tuple = (1_000, 10_000, 100_000),
) -> dict:
    """``gallery_formats``: also search the gallery stored in each format here (mobilereid.gallery, the host's
    code), for the host to check the device's search against its own and to time it on the device."""
    key = key or model.name
    meta = read_sidecar(model)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    ds = load_dataset(data, need_train=False)
    runner = open_runner(model, meta, threads=threads)
    log(
        f"{model.name}: {len(ds.query)} query + {len(ds.gallery)} gallery images, "
        f"runtime {meta['runtime']}, {threads} threads"
    )
    q, tq = embed_split(runner, ds.query, spec, warmup, log, flip)
    g, tg = embed_split(runner, ds.gallery, spec, 0, log, flip)
    labels = split_labels(ds)
    summary = {
        "artifact": model.name,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "size_bytes": model.stat().st_size,
        "target": meta["target"],
        "runtime": meta["runtime"],
        "runtime_version": runtime_version(meta["runtime"]),
        "precision": meta["precision"],
        "threads": threads,
        "warmup": warmup,
        "flip": flip,
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu": host_cpu(),  # model and ISA flags: what the latency was measured on,
        },
        "metrics": rank_summary(q, g, *labels),
        "latency": latency_summary(np.concatenate([tq, tg])),
    }
    if gallery_formats:
        from mobilereid.gallery import compare_formats

        summary["gallery_formats"] = compare_formats(q, g, *labels, list(gallery_formats), gallery_sizes)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / f"{key}.npz",
        query=q,
        gallery=g,
        latency_ms=np.concatenate([tq, tg]),
        **dict(zip(("q_pids", "g_pids", "q_camids", "g_camids"), labels)),
    )
    tmp = out / f".{key}.summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / f"{key}.summary.json")
    return summary


def key_problem(keys: list[str], models: int) -> str | None:
    """Why these result names do not do (None when they do): results under one name would overwrite each other,
    and the host would then report one model's results for two."""
    if len(keys) != models:
        return f"--key: {len(keys)} given for {models} --model"
    for k in keys:
        if k in ("", ".", "..") or "/" in k or os.sep in k:
            return f"--key {k!r}: not a plain file name"
        if keys.count(k) > 1:
            return f"two models would write their results as {k!r} (pass a distinct --key for each)"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", required=True, type=Path, action="append", help="artifact with its .json sidecar (repeatable)"
    )
    ap.add_argument("--data", required=True, type=Path, help="dataset folder (Market-1501 layout)")
    ap.add_argument("--out", type=Path, default=Path("eval_results"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--flip", action="store_true", help="average each image's embedding with its mirror's")
    ap.add_argument("--gallery-formats", default="", help="comma list: float32,float16,int8,binary (no pcaK here)")
    ap.add_argument("--gallery-sizes", default="1000,10000,100000", help="gallery sizes the search is timed at")
    ap.add_argument(
        "--key",
        action="append",
        help="name of the result files of the --model at the same position "
        "(once per --model; default: the model's file name)",
    )
    args = ap.parse_args(argv)
    keys = args.key or [m.name for m in args.model]
    problem = key_problem(keys, len(args.model))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    formats = tuple(f for f in args.gallery_formats.split(",") if f)
    sizes = tuple(int(n) for n in args.gallery_sizes.split(",") if n)
    for m, key in zip(args.model, keys):
        print(f"evaluating {m}", file=sys.stderr, flush=True)  # the host names the artifact if the runtime crashes
        try:
            s = evaluate_artifact(
                m,
                args.data,
                args.out,
                args.threads,
                args.warmup,
                flip=args.flip,
                key=key,
                gallery_formats=formats,
                gallery_sizes=sizes,
            )
        except Exception as exc:  # one line naming the artifact, non-zero exit
            msg = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {msg if str(m) in msg else f'{m}: {msg}'}", file=sys.stderr)
            return 2
        print(
            f"{m.name}: Rank-1 {s['metrics']['rank1']:.2%}  mAP {s['metrics']['mAP']:.2%}  "
            f"p50 {s['latency']['p50_ms']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    faulthandler.enable()  # a native crash still prints "Fatal Python error: ..." where a shell hides the signal
    sys.exit(main())
