"""Per-op time and intermediate tensors of a .tflite, with what LiteRT's Python runtime exposes (numpy + runtime).

Time: the Python interpreter has no op profiler (ai-edge-litert 2.3: no profiling API on ``Interpreter`` or
``CompiledModel``, and no ``benchmark_model`` binary in any wheel). The substitute: each op cut out of the flatbuffer
as a one-op model (``ai_edge_litert.tools.flatbuffer_utils``: that operator, its non-constant inputs as graph
inputs, its outputs as graph outputs) and timed with the default resolver (XNNPACK applied, as deployed), less the
per-invoke overhead (the cheapest one-op model's time, a reshape). The sum of the rows against the whole model's
time is the accounting check the report prints (an op alone misses fusion with its neighbours and finds its
input in cache). Prefix cuts (time of the first k ops minus the first k-1) were tried first: XNNPACK partitions each
prefix differently and the differences came out negative for every other convolution.

Tensors: ``experimental_preserve_all_tensors=True`` with the default delegate: XNNPACK then takes every op on its own
(no fusion across ops), so each op output exists and can be read after ``invoke`` (without preserving, a read may
silently return a reused buffer), computed by the kernels a deployment runs. The builtin reference kernels were
tried first: their int8 rounding differs between the x86 and the aarch64 wheels (148 of 162 SCL-net op outputs
differed on the emulated board), while XNNPACK's int8 results are the same on both. Integer tensors are
dequantized with their own scale and zero point.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np


def _interpreter(path_or_bytes, threads: int = 1, preserve: bool = False, delegate: bool = True):
    """``preserve``: every tensor kept readable after ``invoke``; with ``delegate`` XNNPACK then takes each op on its
    own (no fusion across ops: each output exists), without it the builtin kernels run everything."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"model_path": str(path_or_bytes)} if isinstance(path_or_bytes, Path) else {"model_content": path_or_bytes}
    if preserve:
        kw["experimental_preserve_all_tensors"] = True
    if not delegate:
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors with the default delegate": what is wanted here
        it = Interpreter(num_threads=threads, **kw)
    it.allocate_tensors()
    return it


def op_table(path: Path) -> list[dict]:
    """Every op of the main subgraph in execution order: index, op type, output tensor names."""
    it = _interpreter(path, preserve=True, delegate=False)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return [
        {"index": int(op["index"]), "op": op["op_name"], "outputs": [names.get(int(t), str(t)) for t in op["outputs"]]}
        for op in it._get_ops_details()
    ]


def _median_ms(it, x: np.ndarray | None, repeats: int) -> float:
    """Median ms of ``repeats`` invokes after a warm-up; the single input is ``x`` (zeros for a one-op model's
    inputs, whose values do not change the kernels' time).

    The inputs are written again before every timed invoke (untimed), as in a whole-model run where the op before
    has just written them and pushed the op's own weights out of L1: timed on an untouched input, short ops come out
    faster than they run inside the model, and their sum falls short of the whole (measured in
    docs/results/2026-12-06-6fc7b2e-executorch-threads.md; ops of about 1 µs are at the limit of timing them one by
    one from Python)."""
    details = it.get_input_details()
    values = [x if x is not None and len(details) == 1 else np.zeros(d["shape"], d["dtype"]) for d in details]

    def write_inputs():
        for d, v in zip(details, values):
            it.set_tensor(d["index"], v)

    write_inputs()
    for _ in range(5):
        it.invoke()
    times = []
    for _ in range(repeats):
        write_inputs()
        t0 = time.perf_counter()
        it.invoke()
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def _is_constant(model, graph, t: int) -> bool:
    buffer = graph.tensors[t].buffer
    return buffer != 0 and model.buffers[buffer].data is not None and len(model.buffers[buffer].data) > 0


def profile_tflite(path: Path, x: np.ndarray, threads: int, repeats: int) -> dict:
    """End-to-end latency, load time, and each op timed alone (a one-op model cut from the flatbuffer)."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    t0 = time.perf_counter()
    full = _interpreter(path, threads)
    load_ms = 1000 * (time.perf_counter() - t0)
    e2e = _median_ms(full, x, repeats)
    ops = op_table(path)
    model = fbu.read_model(str(path))
    graph = model.subgraphs[0]
    operators, inputs, outputs, signatures = (
        list(graph.operators),
        list(graph.inputs),
        list(graph.outputs),
        model.signatureDefs,
    )
    rows = []
    try:
        model.signatureDefs = []  # the signature would name tensors a one-op model does not have
        for k, op in enumerate(operators):
            graph.operators = [op]
            graph.inputs = [t for t in dict.fromkeys(op.inputs) if t >= 0 and not _is_constant(model, graph, t)]
            graph.outputs = list(op.outputs)
            it = _interpreter(bytes(fbu.convert_object_to_bytearray(model)), threads)
            rows.append(
                {
                    "index": k,
                    "kind": "op",
                    "op": ops[k]["op"],
                    "name": (ops[k]["outputs"] or [""])[0],
                    "ms": _median_ms(it, None, repeats),
                    "delegated": True,
                }
            )
    finally:
        graph.operators, graph.inputs, graph.outputs, model.signatureDefs = operators, inputs, outputs, signatures
    overhead = min(r["ms"] for r in rows) if rows else 0.0  # the cheapest one-op invoke (a reshape): call overhead
    for r in rows:
        r["ms"] = max(0.0, r["ms"] - overhead)
    return {
        "invoke_overhead_ms": overhead,
        "runtime": "litert",
        "method": f"each of the {len(operators)} ops alone (one-op model, default resolver: XNNPACK), median of "
        f"{repeats} invokes, less the cheapest one-op invoke ({1000 * overhead:.2f} µs: the call overhead)",
        "e2e_ms": e2e,
        "load_ms": load_ms,
        "rows": rows,
    }


def canonical_name(name: str) -> str:
    """A tensor name without the Keras model scope onnx2tf's graph gets (``model_11/``: numbered per process, so
    two conversions of one model differ only there)."""
    return ";".join(re.sub(r"^model(_\d+)?/", "", part) for part in name.split(";"))


def intermediates(path: Path | bytes, xs: list[np.ndarray]) -> list[dict[str, dict]]:
    """Every op output after a run on each of ``xs`` (the model's prepared inputs), one interpreter for all: per
    input, canonical name -> {value (float), scale, op, name}."""
    it = _interpreter(path, preserve=True)
    index = it.get_input_details()[0]["index"]
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    out = []
    for x in xs:
        it.set_tensor(index, np.ascontiguousarray(x))
        it.invoke()
        out.append(_op_outputs(it, ops, details))
    return out


def _op_outputs(it, ops: list[dict], details: dict) -> dict[str, dict]:
    out = {}
    for op in ops:
        if op["op_name"] == "DELEGATE":  # XNNPACK's node for one op: that op's own entry names its outputs
            continue
        for t in op["outputs"]:
            d = details.get(int(t))
            if d is None or not d["name"]:
                continue
            value = it.get_tensor(int(t))
            q = d.get("quantization_parameters") or {}
            scales = np.asarray(q.get("scales", []), np.float64)
            scale = None
            if value.dtype.kind in "iu" and scales.size == 1:
                scale = float(scales[0])
                value = (value.astype(np.float64) - float(np.asarray(q["zero_points"])[0])) * scale
            out[canonical_name(d["name"])] = {
                "value": np.asarray(value, np.float32),
                "scale": scale,
                "op": op["op_name"],
                "name": d["name"],
            }
    return out
