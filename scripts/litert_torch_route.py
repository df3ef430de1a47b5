"""Second TFLite route, measured against the default one: litert-torch (PyTorch -> LiteRT, no ONNX, no TensorFlow)
with ai-edge-quantizer recipes, versus the project's ONNX -> onnx2tf -> TFLiteConverter artifacts.

    .venv/bin/python scripts/litert_torch_route.py --data runs/default/data/synth \\
        --ckpt runs/default/train_sclnet/model.pt --onnx2tf runs/default/export_sclnet \\
        --ckpt runs/default/compress/compressed.pt --onnx2tf runs/default/export_vit_compressed \\
        --out runs/litert_torch_route

For each checkpoint: converts with ``litert_torch.convert`` (channel-last input, like the onnx2tf artifacts), then
quantizes the float flatbuffer with ai-edge-quantizer's ``dynamic_wi8_afp32`` and, calibrated on the recipe's
images through the project's preprocessing, ``static_wi8_ai8`` (which also quantizes softmax, GELU and
BATCH_MATMUL, the ops the TFLiteConverter leaves out of XNNPACK's int8 path). Every model of both routes is run in
the same LiteRT interpreter, same image, same thread count, one after another in this process: size, median/p90
latency, delegate partitions, cosine to the float torch model on held-out images. Writes ``route.json`` and
``route.md``; prints the table. Host CPU latency, not a phone's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilereid.embeddings import preprocess_spec_for  # noqa: E402
from mobilereid.export.calibration import calibration_files, load_batch  # noqa: E402
from mobilereid.export.tflite.delegation import delegation_report  # noqa: E402
from mobilereid.export.tflite.litert_torch_route import convert_with_litert_torch  # noqa: E402
from mobilereid.models.checkpoint import load_checkpoint  # noqa: E402
from mobilereid.report import write_rows_table  # noqa: E402


def interpreter(model_bytes: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=threads)
    it.allocate_tensors()
    return it


def run_once(it, x_nhwc: np.ndarray) -> np.ndarray:
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    x = x_nhwc
    if np.dtype(i["dtype"]) in (np.int8, np.uint8):
        scale, zp = i["quantization"]
        info = np.iinfo(i["dtype"])
        x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(i["dtype"])
    it.set_tensor(i["index"], x)
    it.invoke()
    y = it.get_tensor(o["index"]).astype(np.float32)
    if np.dtype(o["dtype"]) in (np.int8, np.uint8):
        scale, zp = o["quantization"]
        y = (y - zp) * scale
    return y.reshape(len(x_nhwc), -1)


def measure(
    name: str, route: str, model_bytes: bytes, verify_nhwc: np.ndarray, reference: np.ndarray, threads: int, runs: int
) -> dict:
    it = interpreter(model_bytes, threads)
    emb = np.concatenate([run_once(it, v[None]) for v in verify_nhwc])
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (a * b).sum(1)
    x = verify_nhwc[:1]
    for _ in range(5):
        run_once(it, x)
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run_once(it, x)
        ms.append((time.perf_counter() - t0) * 1000)
    deleg = delegation_report(it)
    return {
        "variant": name,
        "route": route,
        "size_mb": len(model_bytes) / 1e6,
        "p50_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "delegate_partitions": deleg["partitions"],
        "ops_outside_delegate": sum(deleg["cpu_ops"].values()),
        "cpu_ops": dict(deleg["cpu_ops"]),
    }


def bench(ckpt: Path, onnx2tf_dir: Path | None, data: Path, threads: int, runs: int) -> list[dict]:
    model, _ = load_checkpoint(ckpt)
    model.eval()
    spec = preprocess_spec_for(model)
    calib_files, verify_files = calibration_files(data, 64, 16)
    calib = load_batch(calib_files, spec)
    verify = load_batch(verify_files, spec)
    with torch.no_grad():
        reference = model(torch.from_numpy(verify)).numpy()
    calib_nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    verify_nhwc = np.ascontiguousarray(verify.transpose(0, 2, 3, 1))
    t0 = time.perf_counter()
    converted = convert_with_litert_torch(model, calib_nhwc, ["fp32", "dynamic", "int8"], threads)
    print(f"[{ckpt}] litert-torch + ai-edge-quantizer: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [measure(k, "litert-torch", v, verify_nhwc, reference, threads, runs) for k, v in converted.items()]
    if onnx2tf_dir is not None:
        for path in sorted(onnx2tf_dir.glob("*.tflite")):
            variant = path.stem.rsplit("_", 1)[-1]
            rows.append(measure(variant, "onnx2tf", path.read_bytes(), verify_nhwc, reference, threads, runs))
    for r in rows:
        r["model"] = ckpt.parent.name
    return rows


def markdown(rows: list[dict], threads: int, runs: int) -> str:
    lines = [
        f"LiteRT interpreter, XNNPACK, {threads} threads, batch 1, {runs} timed runs after 5 warm-up runs, same image.",
        "",
        "| model | route | variant | MB | p50 ms | p90 ms | delegate partitions | ops outside delegate | "
        "cosine mean | cosine min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['route']} | {r['variant']} | {r['size_mb']:.2f} | "
            f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['delegate_partitions']} | {r['ops_outside_delegate']} | "
            f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, action="append", required=True)
    ap.add_argument(
        "--onnx2tf",
        type=Path,
        action="append",
        default=[],
        help="folder with the onnx2tf .tflite artifacts of the checkpoint at the same position",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/litert_torch_route"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for i, ckpt in enumerate(args.ckpt):
        rows += bench(ckpt, args.onnx2tf[i] if i < len(args.onnx2tf) else None, args.data, args.threads, args.runs)
    write_rows_table(
        args.out, "route", {"threads": args.threads, "runs": args.runs}, rows, markdown(rows, args.threads, args.runs)
    )


if __name__ == "__main__":
    main()
