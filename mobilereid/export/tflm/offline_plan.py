"""An offline arena plan for TFLite Micro, so that residual ADDs write over one of their inputs.

TFLite Micro reads arena offsets for a model's tensors from the flatbuffer's ``OfflineMemoryAllocation`` metadata
(TFLM's docs/memory_management.md, "Offline planned tensor allocations": int32 words ``[format version 0, number of
subgraphs, n, offset of tensor 0 .. n-1]``, -1 leaving a tensor to the online planner) and places those tensors
there without a check of its own; the online planner then fits what is left (kernel scratch buffers) around them.
This module writes such a plan for every activation tensor:

* **Lifetimes** are TFLM's: a tensor lives from the operator that writes it (the first operator for a graph input)
  to the last operator that reads it (the last operator for a graph output), both inclusive, in flatbuffer order.
* **In-place ADD**: when an ADD of two same-shape, same-type tensors is the last reader of one of them, its output
  takes that input's offset (one buffer, the union of the two lifetimes). Safe because an elementwise kernel reads
  element i of each input before it writes element i of the output and touches no other element; TFLM's reference
  ADD loops exactly so. Graph inputs (the caller's buffer) and graph outputs are never overwritten.
* **Placement** is the greedy-by-size rule TFLM's own ``GreedyMemoryPlanner`` uses (largest buffer first, each at the
  lowest offset that overlaps no placed buffer whose lifetime overlaps), 16-byte aligned.

The plan is written only when it holds less than the live-memory peak TFLM's own planner can at best reach (the
largest sum of live tensors without in-place ADDs); the exporter measures the arena with and without it and
requires bit-identical outputs from the unplanned model in the TFLM interpreter.
"""

from __future__ import annotations

import struct

import numpy as np

from .memory import _Graph

METADATA_NAME = "OfflineMemoryAllocation"


def _lifetimes(g: _Graph) -> tuple[dict[int, int], dict[int, int]]:
    """First and last operator index (inclusive) of every arena tensor, in flatbuffer order."""
    last_op = max(g.n_ops - 1, 0)
    first = {t: 0 for t in g.inputs}
    for k, outs in enumerate(g.writes):
        for t in outs:
            first.setdefault(t, k)
    last = {}
    for t in g.bytes:
        readers = g.consumers[t]
        last[t] = last_op if t in g.outputs else max(readers, default=first.get(t, 0))
    return first, last


def _buffers(g: _Graph) -> tuple[list[dict], int]:
    """Arena buffers (one per tensor, or one per chain of in-place ADDs) with their lifetimes; and the number of
    ADDs that write over an input."""
    first, last = _lifetimes(g)
    owner = {t: t for t in g.bytes}

    def root(t: int) -> int:
        while owner[t] != t:
            t = owner[t]
        return t

    done: set[int] = set()
    inplace = 0
    for k in range(g.n_ops):
        done.add(k)
        target = g.inplace_target(k, done)
        if target is not None:
            owner[g.writes[k][0]] = root(target)
            inplace += 1
    members: dict[int, list[int]] = {}
    for t in g.bytes:
        if t in first:  # a tensor nothing writes and no graph input is (never allocated) stays out
            members.setdefault(root(t), []).append(t)
    buffers = [
        {
            "tensors": ts,
            "bytes": max(g.bytes[t] for t in ts),
            "first": min(first[t] for t in ts),
            "last": max(last[t] for t in ts),
        }
        for ts in members.values()
    ]
    return buffers, inplace


def _place(buffers: list[dict]) -> int:
    """Greedy by size: sets each buffer's "offset"; returns the planned bytes (the end of the highest buffer)."""
    placed: list[dict] = []
    for b in sorted(buffers, key=lambda b: (-b["bytes"], b["first"])):
        overlapping = [p for p in placed if p["first"] <= b["last"] and b["first"] <= p["last"]]
        for offset in sorted({0} | {p["offset"] + p["bytes"] for p in overlapping}):
            if all(offset + b["bytes"] <= p["offset"] or p["offset"] + p["bytes"] <= offset for p in overlapping):
                break
        b["offset"] = offset
        placed.append(b)
    return max((b["offset"] + b["bytes"] for b in placed), default=0)


def _live_peak(g: _Graph, buffers: list[dict]) -> tuple[int, int, list[dict]]:
    """(bytes, op index, buffers) at the operator where the buffers' live bytes peak."""
    best = (0, 0, [])
    for k in range(g.n_ops):
        live = [b for b in buffers if b["first"] <= k <= b["last"]]
        total = sum(b["bytes"] for b in live)
        if total > best[0]:
            best = (total, k, live)
    return best


def plan_offline(model_bytes: bytes, names_from: bytes | None = None, top: int = 8) -> tuple[bytes, dict]:
    """The model with an ``OfflineMemoryAllocation`` plan in which residual ADDs write over a dying input, and a
    record: planned bytes, the peak without in-place ADDs (TFLM's own planner's best), the number of in-place ADDs,
    the buffers live at the plan's peak. Returns the model unchanged (``"planned": False``) when the plan would not
    hold less."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    g = _Graph(model_bytes, inplace_add=True)
    if len(g.model.subgraphs) != 1:  # TFLM reads one offset list for all subgraphs; plan only single-graph models
        return model_bytes, {"planned": False, "reason": f"{len(g.model.subgraphs)} subgraphs"}
    without_inplace = _Graph(model_bytes).peak(list(range(g.n_ops)))
    buffers, inplace = _buffers(g)
    planned = _place(buffers)
    peak, step, live = _live_peak(g, buffers)
    named = _Graph(names_from) if names_from is not None else g
    record = {
        "planned": inplace > 0 and planned < without_inplace,
        "inplace_adds": inplace,
        "planned_bytes": planned,
        "peak_bytes_without_inplace": without_inplace,
        "peak": {
            "peak_bytes": peak,
            "step": step,
            "op": g.ops[step] if g.n_ops else None,
            "live_tensors": len(live),
            "live": [
                {
                    "tensor": " = ".join(named.names[t] for t in b["tensors"][:2])
                    + (" = ..." if len(b["tensors"]) > 2 else ""),
                    "shape": g.shapes[b["tensors"][0]],
                    "bytes": b["bytes"],
                    "written_by": f"#{g.producer[b['tensors'][0]]} {g.ops[g.producer[b['tensors'][0]]]}"
                    if b["tensors"][0] in g.producer
                    else "graph input",
                    "tensors_sharing": len(b["tensors"]),
                }
                for b in sorted(live, key=lambda b: -b["bytes"])[:top]
            ],
        },
    }
    if not record["planned"]:
        return model_bytes, record
    offsets = [-1] * len(g.subgraph.tensors)
    for b in buffers:
        for t in b["tensors"]:
            offsets[t] = b["offset"]
    model = g.model
    words = struct.pack(f"<{3 + len(offsets)}i", 0, 1, len(offsets), *offsets)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(words, np.uint8).copy()
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME]
    model.metadata = kept + [entry]
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    record["flash_bytes_added"] = len(data) - len(model_bytes)
    return data, record


def _name(entry) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
