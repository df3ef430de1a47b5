"""Per-op time of an ExecuTorch program from its own event tracer (ETDump), as ExecuTorch's developer tools read it.

The pip runtime is built with the event tracer: ``Runtime.load_program(..., enable_etdump=True)`` records every
kernel call outside a delegate (``OPERATOR_CALL``: kernel plus dispatch) and every delegate call
(``DELEGATE_CALL``); the XNNPACK delegate adds one event per XNNPACK operator it ran (``Convolution (NHWC, QC8)
IGEMM #1``), logged before the call that contains them, at 1 µs resolution. `executorch.devtools.Inspector` parses
the dump. Per-op rows here: each kernel call outside XNNPACK (what runs on the portable kernels, and what it
costs), and each delegate call with the XNNPACK operators inside it. Timing runs log no tensors (a debug buffer
slows the run); the numerics run a rebuild of the program one op per partition (executorch_numerics.py).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def profile_pte(path: Path, inputs: list[np.ndarray], threads: int, runs: int) -> dict:
    """End-to-end latency (no tracer), load time, peak memory, and ETDump per-op rows over ``runs`` runs."""
    import torch
    from executorch.devtools import Inspector

    from ..runtimes import _quiet_python_stderr, load_executorch_program

    xs = [torch.from_numpy(x) for x in inputs]
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    program = load_executorch_program(path, threads)
    with _quiet_python_stderr():
        method = program.load_method("forward")
    load_ms = 1000 * (time.perf_counter() - t0)
    for x in xs[:3]:
        method.execute([x])
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        method.execute([xs[i % len(xs)]])
        times.append(1000 * (time.perf_counter() - t0))
    peak = _peak_rss_mb()
    traced = load_executorch_program(path, threads, enable_etdump=True, debug_buffer_size=0)
    with _quiet_python_stderr():
        traced_method = traced.load_method("forward")
    traced_times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        traced_method.execute([xs[i % len(xs)]])
        traced_times.append(1000 * (time.perf_counter() - t0))
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        traced.write_etdump_result_to_file(str(dump), None)
        frame = Inspector(etdump_path=str(dump)).to_dataframe()
    rows = ops_from_events(frame)
    execute = frame[(frame["event_block_name"] == "Execute") & (frame["event_name"] == "Method::execute")]
    method_ms = float(execute["p50 (ms)"].iloc[0]) if len(execute) else None
    return {
        "method_execute_ms": method_ms,  # the runtime's own span of one run: the rows plus dispatch between them
        "runtime": "executorch",
        "method": "ETDump (executorch.devtools.Inspector), median over runs",
        "e2e_ms": float(np.median(times)),
        "traced_e2e_ms": float(np.median(traced_times[3:])),  # the runs the rows come from, tracer included
        "load_ms": load_ms,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - rss_before,
        "rows": rows,
    }


def ops_from_events(frame) -> list[dict]:
    """Inspector rows (in execution order) -> per-op rows: kernels outside delegates and delegate calls with the
    XNNPACK operators logged before each call."""
    rows, inside, delegates = [], [], 0
    pending_kernel = None
    for _, ev in frame[frame["event_block_name"] == "Execute"].iterrows():
        name, ms = ev["event_name"], float(ev["p50 (ms)"])
        if ev["is_delegated_op"]:
            inside.append({"name": name, "ms": ms})
        elif name == "DELEGATE_CALL":
            delegates += 1
            rows.append(
                {
                    "index": len(rows),
                    "kind": "delegate",
                    "name": f"XNNPACK call {delegates}",
                    "op": f"{len(inside)} XNNPACK ops",
                    "ms": ms,
                    "inner": inside,
                    "delegated": True,
                }
            )
            inside = []
        elif name.startswith("native_call_"):
            pending_kernel = name[len("native_call_") :]
        elif name == "OPERATOR_CALL":
            op = pending_kernel or "operator"
            rows.append({"index": len(rows), "kind": "kernel", "name": op, "op": op, "ms": ms, "delegated": False})
            pending_kernel = None
    return rows
