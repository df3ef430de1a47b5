"""The inspection report: report.md / report.html, report.json, ops.png (time and error per op in execution order)
and, for .tflite, Model Explorer node data (``model_explorer_time.json``, ``model_explorer_sqnr.json``: the
``ModelNodeData`` format keyed by output tensor name, which Model Explorer matches to the graph's nodes, to colour
the graph by time or by error)."""

from __future__ import annotations

import json
from pathlib import Path

from .summary import by_op_type, fine_rows, outside_delegate

FILES = ["report.md", "report.html", "report.json", "ops.png", "model_explorer_time.json", "model_explorer_sqnr.json"]


def markdown(report: dict, top: int = 15) -> str:
    t, n = report["time"], report["numerics"]
    lines = [
        f"# mobilereid inspect: `{Path(report['artifact']).name}`",
        "",
        f"{report['runtime']} ({report['runtime_version']}), {report['precision']}, {report['threads']} thread(s), "
        f"on {report['cpu']}; reference `{report['reference']}`; {len(report['images'])} images of the data set.",
        "",
        "## Time",
        "",
        f"End-to-end {t['e2e_ms']:.3f} ms (median), load {t['load_ms']:.1f} ms"
        + (f", peak resident memory {t['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in t else "")
        + f". Per-op method: {t['method']}. Sum of the rows {t['sum_ms']:.3f} ms = "
        f"{100 * t['sum_over_e2e']:.0f} % of end-to-end"
        + (
            f" of the traced runs ({t['traced_e2e_ms']:.3f} ms), {100 * t['sum_over_untraced_e2e']:.0f} % of the "
            "untraced end-to-end."
            if "traced_e2e_ms" in t
            else "."
        )
        + (
            f" The rest, from the runtime's own `Method::execute` event: {t['between_calls_ms']:.3f} ms between the "
            f"calls (instruction dispatch and the tracer) and {t['outside_method_ms']:.3f} ms outside the method "
            "(the Python binding passing the input and output)."
            if "between_calls_ms" in t
            else ""
        ),
        "",
        "| # | op | name | ms | share |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(fine_rows(t), key=lambda r: -r["ms"])[:top]:
        lines.append(
            f"| {r['index']} | {r['op']} | `{r['name'][:70]}` | {r['ms']:.4f} | {100 * r['ms'] / t['e2e_ms']:.1f} % |"
        )
    lines += ["", "By op type:", "", "| op | count | ms | share |", "|---|---|---|---|"]
    lines += [
        f"| {g['op']} | {g['count']} | {g['ms']:.4f} | {100 * g['ms'] / t['e2e_ms']:.1f} % |"
        for g in by_op_type(t)[:top]
    ]
    outside = outside_delegate(t)
    if outside:
        total = sum(g["ms"] for g in outside)
        lines += [
            "",
            f"Outside XNNPACK: {sum(g['calls'] for g in outside)} kernel calls, {total:.3f} ms "
            f"({100 * total / t['e2e_ms']:.1f} % of end-to-end):",
            "",
            "| op | calls | ms |",
            "|---|---|---|",
        ]
        lines += [f"| {g['op']} | {g['calls']} | {g['ms']:.4f} |" for g in outside[:top]]
    lines += ["", "## Numerics against the float model", ""]
    if not n["available"]:
        lines += [f"Not available for this runtime: {n['why']}.", ""]
    else:
        lines += [
            f"{n['matched']} of {n['tensors']} op outputs matched ({100 * n['matched_fraction']:.0f} %): "
            f"{n['matching']}. The artifact's tensors computed on: {n.get('computed_on', 'host')}. Worst first "
            "(mean over images; LSB: of the tensor's own int8 scale).",
            "",
        ]
        if "rebuild" in n:
            b = n["rebuild"]
            agree = (
                "bit-identical to the artifact's"
                if b["bit_identical"]
                else f"against the artifact's: cosine {b['cosine']:.6f}, max abs error {b['max_abs_error']:.3g} "
                "(calibrated differently: the rows describe the rebuild, not exactly the artifact)"
            )
            lines += [
                f"ExecuTorch: the rows come from the artifact's program rebuilt one op per XNNPACK partition from "
                f"--reference and --data; its output on these images is {agree}. Not counted as ops: "
                f"{n['conversions']} partitions that only quantize or dequantize, {n['parts']} that compute part of "
                "one torch call (a matmul's reshapes, a BatchNorm's multiply), compared at the call's last partition.",
                "",
            ]
        lines += [
            "| position | op | tensor | SQNR dB | cosine | max abs error | max error LSB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(n["rows"], key=lambda r: r["sqnr_db"])[:top]:
            lsb = f"{r['max_error_lsb']:.1f}" if "max_error_lsb" in r else "-"
            lines.append(
                f"| {r['position']} | {r['op']} | `{r['name'][:70]}` | {r['sqnr_db']:.1f} | {r['cosine']:.4f} | "
                f"{r['max_abs_error']:.4g} | {lsb} |"
            )
        if n["unmatched"]:
            lines += [
                "",
                "Unmatched (no float tensor of that name): " + ", ".join(f"`{u}`" for u in n["unmatched"][:10]),
            ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fine_rows(report["time"])
    numerics = report["numerics"]
    panels = 2 if numerics.get("available") else 1
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(rows)), [r["ms"] for r in rows], color=["C0" if r.get("delegated", True) else "C3" for r in rows])
    ax.set_ylabel("ms")
    ax.set_xlabel("op (execution order; red: outside XNNPACK)")
    ax.set_title(f"time per op, {Path(report['artifact']).name}")
    ax.grid(alpha=0.3)
    if panels == 2:
        ax = axes[1][0]
        nr = numerics["rows"]
        ax.plot([r["position"] for r in nr], [min(r["sqnr_db"], 80) for r in nr], ".-")
        ax.set_ylabel("SQNR dB vs float (capped at 80)")
        ax.set_xlabel("op output (execution order)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def model_explorer_data(report: dict, key: str, graph: str = "main") -> dict | None:
    """``ModelNodeData`` JSON (graph id -> results keyed by output tensor name) for time or SQNR; None for .pte
    (Model Explorer has no .pte adapter)."""
    if report["runtime"] != "litert":
        return None
    if key == "time":
        results = {r["name"]: {"value": round(r["ms"], 5)} for r in report["time"]["rows"] if r["name"]}
        gradient = [{"stop": 0, "bgColor": "#ffffff"}, {"stop": 1, "bgColor": "#d62728"}]
    else:
        if not report["numerics"].get("available"):
            return None
        results = {r["name"]: {"value": round(min(r["sqnr_db"], 99.0), 2)} for r in report["numerics"]["rows"]}
        gradient = [{"stop": 0, "bgColor": "#d62728"}, {"stop": 1, "bgColor": "#ffffff"}]
    return {graph: {"name": f"mobilereid {key}", "results": results, "gradient": gradient}}


def write(report: dict, out: Path, force: bool = False) -> Path:
    from ..filesafety import staged_folder
    from ..report import write_markdown_and_html

    with staged_folder(Path(out), force) as stage:
        plots = [plot(report, stage / "ops.png")]
        for key, name in (("time", "model_explorer_time.json"), ("sqnr", "model_explorer_sqnr.json")):
            data = model_explorer_data(report, key)
            if data is not None:
                (stage / name).write_text(json.dumps(data, indent=1))
        (stage / "report.json").write_text(json.dumps(report, indent=1, default=float))
        write_markdown_and_html(stage, markdown(report), "mobilereid inspect", plots)
    return Path(out)
