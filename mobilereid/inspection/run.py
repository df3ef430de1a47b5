"""`mobilereid inspect ARTIFACT --reference CKPT --data DIR`: per-op time, delegation and numerics of one artifact.

Inputs are real images of ``--data`` (query and gallery, evenly spaced) through the artifact's own preprocessing
(its sidecar), prepared as the evaluator prepares them. The same integrity rules as `evaluate`: the artifact must
match its sidecar, and ``--reference`` must be its source checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.datasets import load_dataset
from ..data.preprocess import PreprocessSpec, preprocess_file
from ..errors import MobileReIDError
from ..host import host_cpu
from ..runtimes import open_runner, runtime_version
from .numerics import mean_over_images, tensor_error

RUNTIMES = ("executorch", "litert")


def sample_images(data, n: int) -> list:
    ds = load_dataset(data, need_train=False)
    pool = list(ds.query) + list(ds.gallery)
    if not pool:
        raise MobileReIDError(f"{data}: no query or gallery images to inspect with")
    idx = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    return [pool[i] for i in idx]


def inspect_artifact(
    artifact, reference, data, images: int = 4, threads: int = 1, runs: int = 50, device: str = "local"
) -> dict:
    """``device``: ``local``, or ``qemu-arm64[:CPU]``: the artifact's op outputs are then computed by the ARM kernels
    of the emulated board (LiteRT only), and the time rows stay this host's (emulated time is no latency)."""
    from ..evaluate import check_artifacts, parse_qemu

    board = device.startswith("qemu-arm64")
    if device != "local" and not board:
        raise MobileReIDError(f"--device {device!r}: inspect runs on local or qemu-arm64[:CPU]")
    if board:
        parse_qemu(device)

    meta = check_artifacts([artifact], reference)[0]
    if meta["runtime"] not in RUNTIMES:
        raise MobileReIDError(
            f"{artifact}: inspect reads ExecuTorch (.pte) and LiteRT (.tflite) artifacts, not {meta['runtime']}"
        )
    if board and meta["runtime"] != "litert":
        raise MobileReIDError(f"{artifact}: the emulated arm64 board runs LiteRT only, not {meta['runtime']}")
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    samples = sample_images(data, images)
    runner = open_runner(artifact, meta, threads=threads)
    chws = [preprocess_file(s.path, spec, "NCHW") for s in samples]
    inputs = [runner.prepare(chw) for chw in chws]
    report = {
        "artifact": str(artifact),
        "runtime": meta["runtime"],
        "runtime_version": runtime_version(meta["runtime"]),
        "precision": meta["precision"],
        "reference": str(reference),
        "threads": threads,
        "images": [str(s.path) for s in samples],
        "cpu": host_cpu(),
        "device": device,
    }
    if meta["runtime"] == "executorch":
        from .executorch_ops import profile_pte

        report["time"] = profile_pte(artifact, inputs, threads, runs)
        from .executorch_numerics import pte_numerics

        report["numerics"] = pte_numerics(Path(artifact), meta, Path(reference), Path(data), inputs, threads)
        report["numerics"]["computed_on"] = "host"
    else:
        from .float_reference import float_tflite_like
        from .litert_ops import profile_tflite

        report["time"] = profile_tflite(artifact, inputs[0], threads, runs)
        float_model = float_tflite_like(meta, reference, data, threads)
        float_inputs = [np.ascontiguousarray(chw.transpose(1, 2, 0)[None], np.float32) for chw in chws]  # NHWC
        computed = None
        if board:
            from .on_board import board_intermediates

            computed, report["board"] = board_intermediates(Path(artifact), inputs, device)
        report["numerics"] = tflite_numerics(artifact, inputs, float_model, float_inputs, computed)
        report["numerics"]["computed_on"] = f"emulated arm64 board ({report['board']['cpu']})" if board else "host"
    t = report["time"]
    t["sum_ms"] = float(sum(r["ms"] for r in t["rows"]))
    basis = t.get("traced_e2e_ms", t["e2e_ms"])  # ETDump: the traced runs themselves
    t["sum_over_e2e"] = t["sum_ms"] / basis if basis else float("nan")
    if "traced_e2e_ms" in t:  # against the latency a user gets (no tracer): the tracer's cost sits in the rows too
        t["sum_over_untraced_e2e"] = t["sum_ms"] / t["e2e_ms"] if t["e2e_ms"] else float("nan")
    if t.get("method_execute_ms"):  # ExecuTorch: what the rows leave out, measured by the runtime's own events
        t["between_calls_ms"] = t["method_execute_ms"] - t["sum_ms"]  # instruction dispatch and the tracer
        t["outside_method_ms"] = basis - t["method_execute_ms"]  # the Python binding: inputs in, outputs out
    return report


def tflite_numerics(
    artifact, inputs: list[np.ndarray], float_model: bytes, float_inputs: list[np.ndarray], computed=None
) -> dict:
    """Each op output of the artifact against the same-named tensor of the float model, over the images.
    ``computed``: the artifact's op outputs per input, computed elsewhere (the emulated board); else here."""
    from .litert_ops import intermediates

    per_tensor: dict[str, list] = {}
    order, ops, names, unmatched = [], {}, {}, set()
    computed = computed if computed is not None else intermediates(artifact, inputs)
    for got, want in zip(computed, intermediates(float_model, float_inputs)):
        for name, t in got.items():
            if name not in per_tensor and name not in unmatched:
                order.append(name)
            ops[name], names[name] = t["op"], t["name"]
            ref = want.get(name)
            if ref is None or ref["value"].shape != t["value"].shape:
                unmatched.add(name)
                continue
            per_tensor.setdefault(name, []).append(tensor_error(t["value"], ref["value"], t["scale"]))
    rows = [
        {"position": i, "name": names[n], "op": ops[n], **mean_over_images(per_tensor[n])}
        for i, n in enumerate(order)
        if n in per_tensor and n not in unmatched
    ]
    total = len(order)
    return {
        "available": True,
        "matching": "tensor name (Keras model scope dropped) against the fp32 .tflite of --reference through the "
        "artifact's converter",
        "tensors": total,
        "matched": len(rows),
        "matched_fraction": len(rows) / total if total else 0.0,
        "unmatched": sorted({f"{ops[n]} {names[n]}" for n in unmatched})[:50],
        "rows": rows,
    }
