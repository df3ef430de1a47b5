"""Per-op rows summarised (no imports of the report modules): the finest rows there are, time by op type, and the
kernels that run outside XNNPACK. Used by the inspect report and by the evaluation report's per-op section."""

from __future__ import annotations

from collections import defaultdict


def outside_delegate(time: dict) -> list[dict]:
    """Kernels outside XNNPACK grouped by op: count and total ms (ExecuTorch)."""
    groups = defaultdict(lambda: {"calls": 0, "ms": 0.0})
    for r in time["rows"]:
        if not r.get("delegated", True):
            groups[r["op"]]["calls"] += 1
            groups[r["op"]]["ms"] += r["ms"]
    return sorted(({"op": k, **v} for k, v in groups.items()), key=lambda g: -g["ms"])


def fine_rows(time: dict) -> list[dict]:
    """The finest rows there are: XNNPACK operators inside each delegate call (plus the call's own overhead: its
    time minus theirs), kernels outside, LiteRT ops."""
    out = []
    for r in time["rows"]:
        if r.get("inner"):
            for op in r["inner"]:
                out.append(
                    {
                        "index": r["index"],
                        "op": op["name"].split(" #")[0],
                        "name": f"{r['name']}: {op['name']}",
                        "ms": op["ms"],
                        "delegated": True,
                    }
                )
            rest = r["ms"] - sum(op["ms"] for op in r["inner"])
            out.append(
                {
                    "index": r["index"],
                    "op": "delegate call, not in its ops (overhead, µs rounding)",
                    "name": r["name"],
                    "ms": rest,
                    "delegated": True,
                }
            )
        else:
            out.append(r)
    return out


def by_op_type(time: dict) -> list[dict]:
    groups = defaultdict(lambda: {"count": 0, "ms": 0.0})
    for r in fine_rows(time):
        key = r["op"] if r.get("kind") != "ops" else "several ops (one cut)"
        groups[key]["count"] += 1
        groups[key]["ms"] += r["ms"]
    return sorted(({"op": k, **v} for k, v in groups.items()), key=lambda g: -g["ms"])
