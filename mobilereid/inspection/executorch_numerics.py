"""Per-op numerics of an ExecuTorch program against the float model: the program rebuilt one op per XNNPACK
partition, every partition's output read from ETDump, matched to the float model's tensor by source op.

Why a rebuild: XNNPACK logs no tensor inside a delegate, and a .pte cannot be re-partitioned. The artifact's own
program is made again from ``--reference`` with the sidecar's recipe (same PT2E quantizer settings, same calibration
images of ``--data``, `export.executorch_target.program_to_lower`) and lowered with
``XnnpackPartitioner(per_op_mode=True)``: each op (with the Q/DQ nodes around it) becomes its own delegate call, so
each op output crosses the delegate boundary, computed by the XNNPACK kernels a deployment runs (the analogue of
LiteRT's ``experimental_preserve_all_tensors``, litert_ops.py). ExecuTorch's event tracer logs the arguments of
every delegate call and the output of every kernel call into the ETDump debug buffer (``enable_etdump=True,
debug_buffer_size=N``; `executorch.devtools.Inspector` reads them back). The rebuilt program's output is compared
with the artifact's on the same images, and the report says how closely they agree (bit-identical when the same
images were used for calibration): the rows stand for the artifact only as far as that agreement goes.

Matching: every node of an exported graph carries ``torch_fn``, the torch call it came from (``conv2d_3``,
``add_7``, ``linear_12``), kept through quantization and lowering. A partition's output is matched to the float
model's tensor made by the last call of the same name in ``torch.export`` of the float model (so a conv partition
with its ReLU is compared after the ReLU; a BatchNorm folded into the conv is inside it). Partitions that only
convert (a lone quantize or dequantize, XNNPACK's ``Convert``) are no op of the model, and partitions computing
part of one call (a matmul's expand/view/bmm, a BatchNorm as multiply then add) are compared at the call's last
partition: both are counted apart; anything else without a float tensor of its name is listed as unmatched.
"""

from __future__ import annotations

import operator
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .numerics import mean_over_images, tensor_error

QDQ = (
    "quantize_per_tensor",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "dequantize_per_channel",
    "choose_qparams",
)


def _is_qdq(node) -> bool:
    return any(q in str(node.target) for q in QDQ)


def _source(node) -> str | None:
    fn = node.meta.get("torch_fn")
    return fn[0] if fn else None


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _short(target) -> str:
    name = str(getattr(target, "__name__", target)).split(":")[0].split(".")
    return name[1] if name[0] == "aten" and len(name) > 1 else name[0]


def _output_count(node) -> int:
    val = node.meta.get("val")
    return len(val) if isinstance(val, (list, tuple)) else 1


def rebuild_per_op(meta: dict, reference: Path, data: Path, threads: int):
    """(the per-op ExecuTorch program manager, the float model's ExportedProgram) for the artifact of ``meta``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..export.executorch_target import program_to_lower, variant_settings
    from ..export.run import bake_camera, make_job
    from ..models.checkpoint import load_model

    model, state = load_model(reference)
    bake_camera(model, reference, (meta.get("model") or {}).get("config", {}).get("sie_camera"))
    int8 = meta["precision"] != "fp32"
    qcfg = variant_settings(meta["recipe"], meta["precision"]) if int8 else {}
    with tempfile.TemporaryDirectory(prefix="mobilereid-inspect-") as tmp:
        job = make_job(reference, model, state, data, tmp, int(qcfg.get("calibration_images", 64)), 2, threads)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        float_ep = torch.export.export(job.model, (job.example(),))
        ep = program_to_lower(job, int8, qcfg)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner(per_op_mode=True)])
        program = edge.to_executorch()
    return program, float_ep


def instruction_nodes(program) -> list[dict]:
    """The program's calls in execution order: per delegate call its source op, output quantization and module;
    per kernel call the same for the kernel's node."""
    from executorch.exir import memory

    gm = program.exported_program().graph_module
    rows = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target in (operator.getitem, memory.alloc):
            continue
        if "call_delegate" in str(n.target):
            inner = getattr(gm, n.args[0].target).original_module.graph
            calls = [m for m in inner.nodes if m.op == "call_function"]
            compute = [m for m in calls if not _is_qdq(m) and m.target is not operator.getitem]
            out = next(m for m in inner.nodes if m.op == "output").args[0]
            out = out[0] if isinstance(out, (list, tuple)) else out
            scale = None
            if "quantize_per_tensor" in str(out.target) and "dequantize" not in str(out.target):
                scale, zero = float(out.args[1]), int(out.args[2])
            last = compute[-1] if compute else None
            rows.append(
                {
                    "delegated": True,
                    "source": _source(last) if last is not None else None,
                    "op": "+".join(dict.fromkeys(_short(m.target) for m in compute)) or "convert",
                    "module": _module_path(last) if last is not None else "",
                    "scale": scale,
                    "zero_point": zero if scale is not None else 0,
                    "conversion": last is None,
                    "outputs": _output_count(n),
                    "sources": {_source(m) for m in compute} - {None},
                }
            )
        else:
            rows.append(
                {
                    "delegated": False,
                    "source": None if _is_qdq(n) else _source(n),
                    "op": _short(n.target),
                    "module": _module_path(n),
                    "scale": None,
                    "zero_point": 0,
                    "conversion": _is_qdq(n),
                    "outputs": _output_count(n),
                    "sources": {_source(n)} - {None},
                }
            )
    last_of = {r["source"]: i for i, r in enumerate(rows) if r["source"]}
    for i, r in enumerate(rows):  # a call split over partitions (BatchNorm as multiply + add): only its last counts
        r["part"] = bool(r["source"]) and last_of[r["source"]] != i
    return rows


def float_tensors(float_module, x, sources: set[str]) -> dict[str, np.ndarray]:
    """Per torch call name in ``sources`` (the calls the artifact's program still has), the float model's tensor on
    input ``x``: the output of the call's last node, carried forward through single-user calls the program no longer
    has (a BatchNorm folded into the conv before it), so that a conv is compared after its folded BatchNorm."""
    import torch

    values: dict = {}
    last: dict[str, object] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.op == "call_function" and isinstance(value, torch.Tensor):
                values[n] = value.detach().numpy().copy()
                if _source(n):
                    last[_source(n)] = n
            return value

    with torch.no_grad():
        Recorder(float_module).run(x)
    out = {}
    for name in sources & set(last):
        node = last[name]
        while len(node.users) == 1:
            (user,) = node.users
            folded = user in values and _source(user) not in sources and values[user].shape == values[node].shape
            if not folded:
                break
            node = user
        out[name] = values[node]
    return out


def _debug_buffer_bytes(program) -> int:
    """Room for every logged tensor of one run (delegate calls log all their arguments, kernel calls their output),
    twice over: a debug buffer too small aborts the process inside the runtime."""
    gm = program.exported_program().graph_module
    total = 0
    for n in gm.graph.nodes:
        vals = n.meta.get("val")
        for v in vals if isinstance(vals, (list, tuple)) else [vals]:
            if hasattr(v, "numel"):
                total += int(v.numel()) * v.element_size()
    return 4 * total + (8 << 20)


def traced_outputs(pte: Path, debug_buffer_size: int, x) -> tuple[list, object]:
    """The logged tensors of every delegate call (its inputs, then its outputs) and kernel call (its outputs) of one
    run, in execution order, and the program's output."""
    from executorch.devtools import Inspector

    from ..runtimes import _quiet_python_stderr, load_executorch_program

    loaded = load_executorch_program(pte, None, enable_etdump=True, debug_buffer_size=debug_buffer_size)
    with _quiet_python_stderr():
        result = loaded.load_method("forward").execute([x])
    with tempfile.TemporaryDirectory(prefix="mobilereid-inspect-") as tmp:
        dump, buf = Path(tmp) / "run.etdp", Path(tmp) / "debug.bin"
        loaded.write_etdump_result_to_file(str(dump), str(buf))
        with _quiet_python_stderr():
            inspector = Inspector(etdump_path=str(dump), debug_buffer_path=str(buf))
    events = [
        e
        for block in inspector.event_blocks
        if block.name == "Execute"
        for e in block.events
        if not e.is_delegated_op and e.name in ("DELEGATE_CALL", "OPERATOR_CALL")
    ]
    return [list(e.debug_data or []) for e in events], result[0].clone()  # the output lives in runtime memory


def _first_output(node: dict, logged: list):
    """A delegate call logs its inputs then its outputs, a kernel call its outputs: the call's first output."""
    if len(logged) < node["outputs"]:
        return None
    return logged[-node["outputs"]] if node["delegated"] else logged[0]


def pte_numerics(artifact: Path, meta: dict, reference: Path, data: Path, inputs: list[np.ndarray], threads: int):
    """Per-op error of the artifact's program against the float model over ``inputs`` (NCHW float32 batches)."""
    import torch

    from ..runtimes import load_executorch_program

    program, float_ep = rebuild_per_op(meta, Path(reference), Path(data), threads)
    nodes = instruction_nodes(program)
    sources = set().union(*(n["sources"] for n in nodes))
    float_module, buffer_size = float_ep.module(), _debug_buffer_bytes(program)  # once, not per image
    per_row: dict[int, list] = {}
    agreement = []
    with tempfile.TemporaryDirectory(prefix="mobilereid-inspect-") as tmp:
        pte = Path(tmp) / "per_op.pte"
        pte.write_bytes(program.buffer)
        artifact_program = load_executorch_program(artifact, None)
        artifact_method = artifact_program.load_method("forward")
        for x_np in inputs:
            x = torch.from_numpy(x_np)
            outs, final = traced_outputs(pte, buffer_size, x)
            if len(outs) != len(nodes):
                return {
                    "available": False,
                    "why": f"the per-op program logged {len(outs)} calls for {len(nodes)} graph calls; rows could not "
                    "be placed",
                }
            agreement.append(tensor_error(final.numpy(), artifact_method.execute([x])[0].clone().numpy()))
            want = float_tensors(float_module, x, sources)
            for i, (node, logged) in enumerate(zip(nodes, outs)):
                got = _first_output(node, logged)
                ref = want.get(node["source"]) if node["source"] else None
                if node["conversion"] or node["part"] or got is None or ref is None or tuple(got.shape) != ref.shape:
                    continue
                value = got.numpy().astype(np.float64)
                if node["scale"] is not None:
                    value = (value - node["zero_point"]) * node["scale"]
                per_row.setdefault(i, []).append(tensor_error(value, ref, node["scale"]))
    ops = [i for i, n in enumerate(nodes) if not n["conversion"] and not n["part"]]
    rows = [
        {
            "position": i,
            "name": nodes[i]["module"] + (f" ({nodes[i]['source']})" if nodes[i]["source"] else ""),
            "op": nodes[i]["op"],
            **mean_over_images(per_row[i]),
        }
        for i in ops
        if i in per_row
    ]
    unmatched = [f"{nodes[i]['op']} {nodes[i]['source'] or nodes[i]['module']}" for i in ops if i not in per_row]
    agree = mean_over_images(agreement)
    return {
        "available": True,
        "matching": "torch call of origin (torch_fn) of each one-op XNNPACK partition of the rebuilt program against "
        "the float model's torch.export graph",
        "tensors": len(ops),
        "matched": len(rows),
        "matched_fraction": len(rows) / len(ops) if ops else 0.0,
        "conversions": sum(n["conversion"] for n in nodes),
        "parts": sum(n["part"] for n in nodes),
        "unmatched": sorted(set(unmatched))[:50],
        "rows": rows,
        "rebuild": {
            "note": "rows come from the program rebuilt one op per partition from --reference and --data; its output "
            "against the artifact's on the same images",
            "cosine": agree["cosine"],
            "max_abs_error": agree["max_abs_error"],
            "bit_identical": agree["max_abs_error"] == 0.0,
        },
    }
