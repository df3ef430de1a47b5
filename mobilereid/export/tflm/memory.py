"""Where a TFLite Micro arena goes, and an operator order that needs less of it.

**Peak analysis.** TFLite Micro keeps every non-constant tensor (the graph input, each operator's output) in the
arena's planned ("head") section from the operator that writes it to the last operator that reads it, and runs the
operators in the order the flatbuffer lists them; it never computes an op in place. So the planned section can be
no smaller than the largest sum of live tensor bytes over the operator steps: `peak_breakdown` finds that step and
names the tensors live there (the answer to "which layer makes the arena this big"). TFLM's greedy planner packs
those lifetimes into the head; the rest of the arena (the "tail") holds per-op persistent data (per-channel
requantization multipliers and shifts, 8 bytes per output channel of each conv), the runtime's tensor and node
structs. `measured_arena_sections` reads both sections from TFLM's own recording allocator.

**Operator reordering** (Liberis & Lane, "Neural networks on microcontrollers: saving memory at inference via
operator reordering", 2019): for a graph with branches, the order of the operators decides which tensors are live
together. An SC-unit has two parallel chains and sums three fuse convolutions; the converter emits an order that can
hold all three fuse outputs at once. `reorder_for_memory` searches the orders allowed by the data dependencies for
the one with the smallest peak, exactly (dynamic programming over the sets of already executed operators, as in the
paper), and falls back to a greedy choice when the graph is too branchy for the exact search. The order changes
no arithmetic: the reordered model gives bit-identical outputs (checked in the TFLM interpreter by the exporter).

**In-place adds.** TFLM's planner never lets an operator write into one of its inputs, so a residual ADD holds its two
inputs and its sum at once (three 128 KiB tensors in OSNet x0.25's stage 2 at 256x128). An elementwise ADD of two
same-shape int8 tensors can write its sum over an input that nobody reads afterwards: element i of the output
depends on element i of each input only. With `inplace_add` the analysis here (and the search for an order)
counts such an ADD's output in the memory of the input it replaces; `offline_plan.py` then writes the arena offsets
that make TFLM do it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ...errors import ExportError

_ALIGN = 16  # TFLM aligns each planned buffer to 16 bytes


def _model(model_bytes: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))


def _dtype_sizes() -> dict[int, int]:
    from tensorflow.lite.python import schema_py_generated as schema

    sizes = {
        "FLOAT32": 4,
        "FLOAT16": 2,
        "INT32": 4,
        "UINT8": 1,
        "INT64": 8,
        "BOOL": 1,
        "INT16": 2,
        "INT8": 1,
        "FLOAT64": 8,
        "UINT32": 4,
        "UINT16": 2,
        "INT4": 1,
    }
    return {getattr(schema.TensorType, k): v for k, v in sizes.items() if hasattr(schema.TensorType, k)}


class _Graph:
    """The main subgraph's operators as producer/consumer sets over the arena (non-constant) tensors."""

    def __init__(self, model_bytes: bytes, inplace_add: bool = False):
        from ..tflite.ops import op_names

        model = _model(model_bytes)
        self.ops = op_names(model_bytes)
        sg = model.subgraphs[0]
        sizes = _dtype_sizes()
        self.model, self.subgraph = model, sg
        self.names = [
            t.name.decode() if isinstance(t.name, bytes) else str(t.name or f"tensor{i}")
            for i, t in enumerate(sg.tensors)
        ]
        self.shapes = [[int(s) for s in t.shape] if t.shape is not None else [] for t in sg.tensors]

        def constant(i):
            t = sg.tensors[i]
            data = model.buffers[t.buffer].data if 0 < t.buffer < len(model.buffers) else None
            return data is not None and len(data) > 0

        self.bytes = {}
        for i, t in enumerate(sg.tensors):
            if not constant(i):
                n = int(np.prod(self.shapes[i])) if self.shapes[i] else 1
                self.bytes[i] = -(-n * sizes.get(t.type, 4) // _ALIGN) * _ALIGN
        ops = sg.operators or []
        self.n_ops = len(ops)
        self.reads = [
            [i for i in (op.inputs if op.inputs is not None else []) if i >= 0 and i in self.bytes] for op in ops
        ]
        self.writes = [
            [i for i in (op.outputs if op.outputs is not None else []) if i >= 0 and i in self.bytes] for op in ops
        ]
        self.inputs = [i for i in sg.inputs if i in self.bytes]
        self.outputs = set(int(i) for i in sg.outputs)
        self.producer = {t: k for k, outs in enumerate(self.writes) for t in outs}
        self.consumers: dict[int, set[int]] = {t: set() for t in self.bytes}
        for k, ins in enumerate(self.reads):
            for t in ins:
                self.consumers[t].add(k)
        self.deps = [{self.producer[t] for t in ins if t in self.producer} for ins in self.reads]
        self.inplace_inputs = [self._inplace_inputs(k) if inplace_add else [] for k in range(self.n_ops)]

    def _inplace_inputs(self, k: int) -> list[int]:
        """The inputs op k may write its output over (when it is their last reader): an ADD's inputs of the output's
        shape and type that are neither graph inputs (the caller's buffer) nor graph outputs."""
        if self.ops[k] != "ADD" or len(self.writes[k]) != 1:
            return []
        out = self.writes[k][0]
        types = lambda t: self.subgraph.tensors[t].type  # noqa: E731
        return [
            t
            for t in self.reads[k]
            if self.shapes[t] == self.shapes[out]
            and types(t) == types(out)
            and t not in self.inputs
            and t not in self.outputs
        ]

    def inplace_target(self, k: int, done: set[int]) -> int | None:
        """The input op k writes over, given the ops `done` once it has run (None: it needs memory of its own)."""
        for t in self.inplace_inputs[k]:
            if self.consumers[t] <= done:
                return t
        return None

    def live_per_step(self, order: list[int]) -> list[tuple[int, list[int]]]:
        """For each step of `order`: (bytes live while that op runs, the live tensors)."""
        done: set[int] = set()
        live = {t for t in self.inputs}
        steps = []
        for k in order:
            live |= set(self.writes[k])
            done.add(k)
            shared = self.bytes[self.writes[k][0]] if self.inplace_target(k, done) is not None else 0
            steps.append((sum(self.bytes[t] for t in live) - shared, sorted(live)))
            live = {t for t in live if t in self.outputs or not self.consumers[t] <= done}
        return steps

    def peak(self, order: list[int]) -> int:
        return max((b for b, _ in self.live_per_step(order)), default=0)


def peak_breakdown(model_bytes: bytes, names_from: bytes | None = None, top: int = 8) -> dict:
    """The operator step with the most live arena bytes and the tensors live there (largest first), as TFLM's own
    planner keeps them (an offline plan reports its own peak: offline_plan.py).

    ``names_from``: the same graph before its strings were stripped, to name the tensors."""
    g = _Graph(model_bytes)
    named = _Graph(names_from) if names_from is not None else g
    order = list(range(g.n_ops))
    steps = g.live_per_step(order)
    if not steps:
        return {"peak_bytes": 0, "step": None, "live": []}
    step = int(np.argmax([b for b, _ in steps]))
    total, live = steps[step]
    from ..tflite.ops import op_names

    ops = op_names(model_bytes)
    rows = sorted(
        (
            {
                "tensor": named.names[t],
                "shape": g.shapes[t],
                "bytes": g.bytes[t],
                "written_by": f"#{g.producer[t]} {ops[g.producer[t]]}" if t in g.producer else "graph input",
            }
            for t in live
        ),
        key=lambda r: -r["bytes"],
    )
    return {"peak_bytes": int(total), "step": step, "op": ops[step], "live_tensors": len(rows), "live": rows[:top]}


def reorder_for_memory(model_bytes: bytes, max_states: int = 200_000, inplace_add: bool = False) -> tuple[bytes, dict]:
    """The model with its operators in the dependency-respecting order of least peak live memory (with
    ``inplace_add``: counting an ADD that writes over a dying input once, as the offline plan will place it).

    Returns the new flatbuffer and a record: peak before/after (analysis bytes) and the search used."""
    from tensorflow.lite.tools import flatbuffer_utils

    g = _Graph(model_bytes, inplace_add)
    before = g.peak(list(range(g.n_ops)))
    order, method = _best_order(g, max_states)
    after = g.peak(order)
    if after >= before:
        return model_bytes, {
            "peak_bytes_before": before,
            "peak_bytes_after": before,
            "method": method,
            "reordered": False,
        }
    sg = g.subgraph
    sg.operators = [sg.operators[k] for k in order]
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(g.model))
    return data, {"peak_bytes_before": before, "peak_bytes_after": after, "method": method, "reordered": True}


def _best_order(g: _Graph, max_states: int) -> tuple[list[int], str]:
    """Exact minimum-peak order by memoised search over executed-op sets (bitmasks); greedy past `max_states`."""
    n = g.n_ops
    dep_mask = [sum(1 << d for d in deps) for deps in g.deps]
    out_bytes = [sum(g.bytes[t] for t in w) for w in g.writes]
    cons_mask = {t: sum(1 << c for c in cs) for t, cs in g.consumers.items()}
    # tensors op k may free: the ones it reads or writes (a tensor is freed once all its consumers ran)
    touched = [set(g.reads[k]) | set(g.writes[k]) for k in range(n)]
    full = (1 << n) - 1

    def after(done: int, k: int, live: int) -> int:
        """Live bytes once op k has run, given the live bytes before it."""
        now = done | 1 << k
        freed = sum(g.bytes[t] for t in touched[k] if t not in g.outputs and cons_mask[t] & ~now == 0)
        return live + out_bytes[k] - freed

    def during(done: int, k: int, live: int) -> int:
        """Live bytes while op k runs: its outputs join the live set, unless it writes over a dying input."""
        now = done | 1 << k
        shared = any(cons_mask[t] & ~now == 0 for t in g.inplace_inputs[k])
        return live + (0 if shared else out_bytes[k])

    states = 0
    memo: dict[int, tuple[int, tuple[int, ...]]] = {}

    def best(done: int, live: int) -> tuple[int, tuple[int, ...]]:
        nonlocal states
        if done in memo:
            return memo[done]
        states += 1
        if states > max_states:
            raise _TooBranchy
        if done == full:
            return 0, ()
        result = None
        for k in range(n):
            if not done >> k & 1 and dep_mask[k] & ~done == 0:
                rest, tail = best(done | 1 << k, after(done, k, live))
                cand = (max(during(done, k, live), rest), (k,) + tail)
                if result is None or cand[0] < result[0]:
                    result = cand
        memo[done] = result
        return result

    start = sum(g.bytes[t] for t in g.inputs)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * n + 100))
    try:
        return list(best(0, start)[1]), "exact"
    except _TooBranchy:
        return _greedy_order(g, dep_mask, out_bytes, after, start), "greedy"
    finally:
        sys.setrecursionlimit(limit)


class _TooBranchy(Exception):
    pass


def _greedy_order(g: _Graph, dep_mask, out_bytes, after, live: int) -> list[int]:
    """Each step runs the ready op that leaves the least live memory after it (ties: the smaller output, then the
    original order)."""
    done, order = 0, []
    for _ in range(g.n_ops):
        ready = [k for k in range(g.n_ops) if not done >> k & 1 and dep_mask[k] & ~done == 0]
        k = min(ready, key=lambda k: (after(done, k, live), out_bytes[k], k))
        live = after(done, k, live)
        order.append(k)
        done |= 1 << k
    return order


_SECTION = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_USE = re.compile(r"'([^']+)' used (\d+) bytes")
_PRINT_ALLOCATIONS = """
import sys
from tflite_micro.python.tflite_micro import runtime
runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2])).print_allocations()
"""


def measured_arena_sections(path: Path, arena: int) -> dict:
    """TFLM's recording allocator, asked in a child process (it prints from C++): the planned head (live tensors),
    the persistent tail and what the tail holds, in bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRINT_ALLOCATIONS, str(path), str(arena)], capture_output=True, text=True, timeout=300
    )
    text = proc.stdout + proc.stderr
    sections = {k: int(v) for k, v in _SECTION.findall(text)}
    if proc.returncode != 0 or "head" not in sections:
        raise ExportError(f"{path.name}: TFLite Micro's recording allocator gave no arena breakdown")
    return {
        "planned_head_bytes": sections["head"],
        "persistent_tail_bytes": sections["tail"],
        "total_bytes": sections.get("total", sections["head"] + sections["tail"]),
        "tail_parts": {k: int(v) for k, v in _USE.findall(text)},
    }
