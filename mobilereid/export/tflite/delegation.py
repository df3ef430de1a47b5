"""Which ops of a .tflite model the XNNPACK delegate took, read from a live LiteRT interpreter.

The interpreter lists every node of the original graph followed by one ``DELEGATE`` node per partition; it does not
say which original nodes a partition swallowed. A partition's node lists only the partition's boundary tensors, so
its ops are found by walking back from its outputs through their producers until the partition's inputs (or
constants) are reached. Ops in no partition run on LiteRT's own kernels (reference or optimized, single op at a
time) — the usual reason an int8 transformer is slower than its float version (TOOLCHAIN.md).
"""

from __future__ import annotations

from collections import Counter


def delegation_report(interpreter) -> dict:
    """``{"partitions", "delegated_ops", "cpu_ops" (Counter of op names outside every partition), "total_ops"}``."""
    nodes = interpreter._get_ops_details()
    original = [n for n in nodes if n["op_name"] != "DELEGATE"]
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    producer = {int(t): n["index"] for n in original for t in n["outputs"]}
    by_index = {n["index"]: n for n in original}
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in seen or t in boundary or t not in producer:
                continue
            seen.add(t)
            op = producer[t]
            delegated.add(op)
            stack.extend(int(i) for i in by_index[op]["inputs"] if i >= 0)
    cpu = Counter(n["op_name"] for n in original if n["index"] not in delegated)
    return {"partitions": len(delegates), "delegated_ops": len(delegated), "cpu_ops": cpu, "total_ops": len(original)}
