"""Reports people read: Markdown tables, JSON, PNG plots (CMC curves, accuracy vs latency) and one self-contained
HTML page (report.html: the Markdown with sortable tables and the plots embedded, html_report.py).

Every report is staged in a temporary folder and moved into place only when complete, so a failure leaves no
partial report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .filesafety import staged_folder


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def eval_markdown(report: dict) -> str:
    flip = ", flip-averaged (image + mirror)" if report.get("flip") else ""
    lines = [f"# Evaluation on `{report['data']}` ({report['device']}, {report['threads']} threads{flip})", ""]
    ref, base = report.get("reference"), report.get("baseline")
    if base:
        m = base["metrics"]
        lines += [
            f"**Your float model** `{base['checkpoint']}` (torch): "
            f"Rank-1 {_pct(m['rank1'])}, mAP {_pct(m['mAP'])}, mINP {_pct(m['mINP'])}. "
            "The first ΔmAP / cosine columns compare each artifact with it; "
            "the last ones with the float model our stages "
            "made from it and exported (what conversion and quantization alone cost).",
            "",
        ]
    if ref:
        m = ref["metrics"]
        lines += [
            f"Float reference `{ref['checkpoint']}` (torch{', the exported float model' if base else ''}): "
            f"Rank-1 {_pct(m['rank1'])}, "
            f"mAP {_pct(m['mAP'])}, mINP {_pct(m['mINP'])}",
            "",
        ]
    vs = " vs exported" if base else ""
    head = (
        "| artifact | runtime | precision | export verification | MB | Rank-1 | Rank-5 | mAP | mINP | "
        + ("ΔmAP vs yours | cosine vs yours | top-1 agree vs yours | " if base else "")
        + f"ΔmAP{vs} | cosine{vs} | top-1 agree{vs} | p50 ms | p90 ms | p99 ms | img/s |"
    )
    lines += [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in report["artifacts"]:
        m, lat, d, bd = r["metrics"], r["latency"], r.get("drift"), r.get("drift_vs_baseline")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    r["runtime"],
                    r["precision"],
                    r.get("verification", "missing"),
                    f"{r['size_mb']:.2f}",
                    _pct(m["rank1"]),
                    _pct(m["rank5"]),
                    _pct(m["mAP"]),
                    _pct(m["mINP"]),
                ]
                + (
                    [
                        f"**{100 * r['delta_mAP_vs_baseline']:+.2f}**",
                        f"{bd['cosine_mean']:.4f}" if bd else "-",
                        f"{100 * bd['top1_agreement']:.1f}%" if bd else "-",
                    ]
                    if base
                    else []
                )
                + [
                    f"{100 * r['delta_mAP']:+.2f}" if "delta_mAP" in r else "-",
                    f"{d['cosine_mean']:.4f}" if d else "-",
                    f"{100 * d['top1_agreement']:.1f}%" if d else "-",
                    *(
                        [
                            f"{lat['p50_ms']:.2f}",
                            f"{lat['p90_ms']:.2f}",
                            f"{lat['p99_ms']:.2f}",
                            f"{lat['throughput_per_s']:.1f}",
                        ]
                        if lat
                        else ["-"] * 4
                    ),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Latency: per-image inference in the named runtime after warm-up, preprocessing excluded, batch 1, on the "
        "device named above (host latency when the device is local). "
        "Metrics: Market-1501 protocol (same-pid-same-camera "
        "gallery items removed, stable tie order).",
        "",
    ]
    cpus = sorted(
        {r["host"]["cpu"] for r in report["artifacts"] if isinstance(r.get("host"), dict) and r["host"].get("cpu")}
    )
    if cpus:
        versions = sorted({r["runtime_version"] for r in report["artifacts"] if r.get("runtime_version")})
        lines += [
            f"Measured on: {'; '.join(cpus)} (CPU model and the ISA extensions that decide the kernels)"
            + (f"; runtimes {', '.join(versions)}" if versions else "")
            + ".",
            "",
        ]
    if report.get("limit"):
        lim = report["limit"]
        lines += [
            f"Subset (--limit {lim['asked']}): {lim['queries']} queries of evenly spaced identities "
            f"and {lim['gallery']} gallery "
            "images (those identities' and as many others, evenly spaced); "
            "every model of this report saw the same images.",
            "",
        ]
    lines += matching_markdown(report)
    lines += gallery_markdown(report)
    lines += inspect_markdown(report)
    lines += arm_markdown(report)
    counts = {(r["metrics"].get("queries_scored"), r["metrics"].get("queries")) for r in report["artifacts"]}
    for scored, total in sorted(c for c in counts if c[0] is not None):
        if scored < total:
            lines += [
                f"Queries scored: {scored} of {total}; the other {total - scored} have no image of the same identity "
                "from another camera in the gallery (Market-1501 protocol) and are left out.",
                "",
            ]
    baked = sorted({r["baked_camera"] for r in report["artifacts"] if r.get("baked_camera") is not None})
    if baked and ref:
        lines += [
            f"Camera: the artifacts have camera {', '.join(map(str, baked))}'s SIE embedding baked in; "
            "the float reference "
            "uses each image's own camera (TransReID's protocol), so the drift includes what baking one camera costs.",
            "",
        ]
    bad = [
        f"{r['name']} ("
        + (
            "sha256 differs from its sidecar"
            if not r["integrity"]["sha256_matches"]
            else "not exported from the reference"
        )
        + ")"
        for r in report["artifacts"]
        if r.get("integrity")
        and (not r["integrity"]["sha256_matches"] or r["integrity"]["reference_is_source"] is False)
    ]
    if bad:
        lines += ["**Evaluated with --allow-mismatch**: " + "; ".join(bad), ""]
    return "\n".join(lines)


def matching_markdown(report: dict) -> list[str]:
    """Same-person decision metrics and compatibility with the user's model (matching.py)."""
    rows = [r for r in report["artifacts"] if r.get("matching")]
    if not rows:
        return []
    far = report.get("target_far", rows[0]["matching"]["threshold"]["target_far"])
    compat = any(r.get("compatibility") for r in rows)
    lines = [
        "## Deployment matching",
        "",
        f"Same person when the cosine similarity is above the threshold; cross-camera query x gallery pairs. The "
        f"threshold for FAR {far:g} is fitted on even person ids and measured on odd ones (held out); in brackets, "
        f"the effective number of identity pairs that set it, and the FAR it would give on other people drawn like "
        f"the fitting ones (10th-90th percentile of identity resamples)."
        + (" Mixed search: queries embedded by the artifact, gallery by your float model." if compat else ""),
        "",
        "| artifact | EER | TAR @ FAR 1e-2 | TAR @ FAR 1e-3 | threshold | held-out FAR | held-out TAR |"
        + " enrolled: found / rejected / wrong person | not enrolled: matched |"
        + (" cosine vs yours | mixed-search mAP | own mAP |" if compat else ""),
        "|" + "---|" * (9 + (3 if compat else 0)),
    ]
    for r in rows:
        m, t, c = r["matching"], r["matching"]["threshold"], r.get("compatibility")
        cells = [
            r["name"],
            f"{100 * m['eer']:.2f}%",
            f"{100 * m['tar_at_far']['0.01']:.1f}%",
            f"{100 * m['tar_at_far']['0.001']:.1f}%",
            f"{t['value']:.3f}" + (f" ({t['tail_identity_pairs']} id pairs)" if "tail_identity_pairs" in t else ""),
            f"{t['held_out_far']:.2g}" + (" ({:.2g}-{:.2g})".format(*t["far_spread"]) if "far_spread" in t else ""),
            f"{100 * t['held_out_tar']:.1f}%",
            *_open_set_cells(m.get("open_set")),
        ]
        if compat:
            cells += [f"{c['cosine_mean']:.3f}", _pct(c["mixed_mAP"]), _pct(r["metrics"]["mAP"])] if c else ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [
        "Open set (held-out half, at the threshold): a search for an enrolled person finds them, rejects them (best "
        "score below the threshold) or returns someone else; a person not enrolled (each query with its own identity "
        "removed from the gallery, plus distractor queries) is wrongly matched to an enrolled one.",
        "",
    ]
    for r in rows:
        for warning in (r["matching"]["threshold"].get("warning"), (r.get("compatibility") or {}).get("warning")):
            if warning:
                lines += [f"**Warning** `{r['name']}`: {warning}.", ""]
    return lines


def _open_set_cells(o: dict | None) -> list[str]:
    if not o:
        return ["-", "-"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    return [
        f"{pct(o['known_matched_right'])} / {pct(o['known_rejected'])} / {pct(o['known_matched_wrong'])} "
        f"({o['known_queries']} queries)",
        f"{pct(o['unknown_false_match'])} ({o['unknown_queries']} queries)",
    ]


def gallery_markdown(report: dict) -> list[str]:
    """Gallery storage formats (gallery.py): retrieval cost, storage and search time per query on this host."""
    rows = [r for r in report["artifacts"] if r.get("gallery_formats")]
    if not rows:
        return []
    sizes = list(rows[0]["gallery_formats"][0]["search_ms"])
    lines = [
        "## Gallery formats",
        "",
        "The gallery stored in each format and searched with the artifact's queries; search time: one query against "
        "N random stored items, top-1, on the device that ran the evaluation (float32 and float16: numpy, float32 "
        "sums; int8: onnxruntime's integer GEMM where it is installed, else numpy; binary: popcount). float16 is "
        "smaller, not faster, where no half-precision GEMV is at hand (x86 hosts: docs/devices.md). "
        "pcaK: fitted on the artifact's embeddings of training images (projection files under raw/).",
        "",
        "| artifact | format | mAP (Δ vs float32) | bytes per item | smaller | "
        + " | ".join(f"search ms @ {int(n):,}" for n in sizes)
        + " |",
        "|" + "---|" * (5 + len(sizes)),
    ]
    for r in rows:
        for f in r["gallery_formats"]:
            times = " | ".join(f"{f['search_ms'][n]:.2f}" for n in sizes)
            lines.append(
                f"| {r['name']} | {f['format']} | {_pct(f['mAP'])} ({100 * f['delta_mAP']:+.2f}) | "
                f"{f['bytes_per_item']} | {f['storage_ratio']:.0f}x | {times} |"
            )
    own = [(r, f) for r in rows for f in r["gallery_formats"] if f.get("threshold")]
    if own:  # pcaK and binary score on scales of their own, so each gets its own threshold
        lines += [
            "",
            "Same-person thresholds of the formats that score on a scale of their own (pcaK: the projected cosine; "
            "binary: (D - 2 x Hamming) / D), calibrated like the artifact's own:",
            "",
            "| artifact | format | threshold | target FAR | held-out FAR | held-out TAR |",
            "|---|---|---|---|---|---|",
        ]
        for r, f in own:
            t = f["threshold"]
            lines.append(
                f"| {r['name']} | {f['format']} | {t['value']:.3f} | {t['target_far']:g} | {t['held_out_far']:.4f} | "
                f"{100 * t['held_out_tar']:.1f}% |"
            )
    on_device = [r for r in rows if r.get("gallery_formats_device")]
    if on_device:
        first = on_device[0]["gallery_formats_device"][0]
        where = "emulated board: emulation time, not a latency" if first["emulated"] else "the device"
        dsizes = list(first["search_ms"])
        lines += [
            "",
            "Gallery search on the device: the device's evaluator searched its own embeddings with the same code; "
            "its results against the host's search of those embeddings, and its search times "
            f"({where}).",
            "",
            "| artifact | format | device mAP − host | same top-1 as host | "
            + " | ".join(f"device search ms @ {int(n):,}" for n in dsizes)
            + " |",
            "|" + "---|" * (4 + len(dsizes)),
        ]
        for r in on_device:
            for f in r["gallery_formats_device"]:
                times = " | ".join(f"{f['search_ms'][n]:.2f}" for n in dsizes)
                lines.append(
                    f"| {r['name']} | {f['format']} | {100 * f['mAP_minus_host']:+.2f} | "
                    f"{100 * f['top1_same_as_host']:.0f} % | {times} |"
                )
    return lines + [""]


def inspect_markdown(report: dict, top: int = 5) -> list[str]:
    """`evaluate --inspect`: per artifact, where its time goes and where its error starts (inspection/)."""
    rows = [r for r in report["artifacts"] if r.get("inspect")]
    if not rows:
        return []
    from .inspection.summary import by_op_type, outside_delegate

    lines = ["## Per-op inspection", ""]
    for r in rows:
        i = r["inspect"]
        t, n = i["time"], i["numerics"]
        types = ", ".join(f"{g['op']} {100 * g['ms'] / t['e2e_ms']:.0f} %" for g in by_op_type(t)[:top])
        outside = outside_delegate(t)
        lines.append(
            f"- `{r['name']}` ({t['method'].split(',')[0]}; rows: {100 * t['sum_over_e2e']:.0f} % of end to end): "
            f"{types}"
            + (
                f"; outside XNNPACK {sum(g['ms'] for g in outside):.3f} ms ({', '.join(g['op'] for g in outside[:3])})"
                if outside
                else ""
            )
        )
        if n.get("available"):
            worst = sorted(n["rows"], key=lambda x: x["sqnr_db"])[:3]
            lines.append(
                f"  - numerics: {n['matched']}/{n['tensors']} op outputs matched; lowest SQNR "
                + ", ".join(f"{w['op']} #{w['position']} {w['sqnr_db']:.1f} dB" for w in worst)
            )
        else:
            lines.append(f"  - numerics: not available ({n['why'].split(',')[0]})")
    return lines + ["", "Full per-op tables: `mobilereid inspect ARTIFACT --reference CKPT --data DIR`.", ""]


def arm_markdown(report: dict) -> list[str]:
    """The emulated-ARM section: each artifact's ARM outputs against this host's, and its accuracy from both."""
    rows = [r for r in report["artifacts"] if r.get("arm")]
    if not rows:
        return []
    lines = [
        f"## On the emulated arm64 board ({rows[0]['arm']['cpu']}, {rows[0]['arm'].get('qemu') or 'qemu'})",
        "",
        "| artifact | precision | ARM vs host: max abs diff | max output LSB | cosine min | identical rows "
        "| mAP ARM | mAP host | emulated ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, v = r["arm"], r["arm"]["vs_host"]
        lines.append(
            f"| {r['name']} | {r['precision']} | {v['max_abs_diff']:.3g} | {v.get('max_output_lsb', '-')} "
            f"| {v['cosine_min']:.6f} | "
            f"{100 * v['identical_fraction']:.1f}% ({v['images']} images) | {_pct(r['metrics']['mAP'])} "
            f"| {_pct(a['host_metrics']['mAP'])} | "
            f"{a['emulated_ms_per_image_p50']:.0f} |"
        )
    lines += [
        "",
        "The main table's metrics and drift are computed from the ARM embeddings. The ARM run uses the real aarch64 "
        "LiteRT wheel and its ARM kernels on a CPU model emulated by qemu-user; the time it takes there is emulation "
        "time (the table's last column, for planning runs), not a latency, so the latency columns are left empty. "
        "Latency and NPU delegates still need a real phone.",
        "",
    ]
    return lines


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: bool) -> str:
    """Label, grid, legend, save as PNG (120 dpi) and close; returns the file name."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def plot_eval(report: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    if report.get("reference"):
        cmc = report["reference"]["metrics"].get("cmc")
        if cmc:
            ax.plot(range(1, len(cmc) + 1), [100 * c for c in cmc], "k--", label="float reference (torch)")
    for r in report["artifacts"]:
        cmc = r["metrics"]["cmc"]
        ax.plot(range(1, len(cmc) + 1), [100 * c for c in cmc], marker=".", label=f"{r['name']} ({r['runtime']})")
    files.append(save_plot(fig, ax, folder / "cmc.png", "rank", "matching rate (%)", "CMC", legend=True))

    with_roc = [r for r in report["artifacts"] if r.get("matching")]
    if with_roc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in with_roc:
            roc = r["matching"]["roc"]
            ax.plot(roc["far"], [100 * t for t in roc["tar"]], label=f"{r['name']} ({r['runtime']})")
        ax.set_xscale("log")
        files.append(
            save_plot(
                fig,
                ax,
                folder / "roc.png",
                "false accept rate (cross-camera pairs)",
                "true accept rate (%)",
                "same-person decision (ROC)",
                legend=True,
            )
        )
    timed = [r for r in report["artifacts"] if r.get("latency")]
    if not timed:  # an emulated device: no latency to plot
        return files
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in timed:
        ax.scatter(r["latency"]["p50_ms"], 100 * r["metrics"]["mAP"], s=30 + 20 * r["size_mb"])
        ax.annotate(
            r["name"],
            (r["latency"]["p50_ms"], 100 * r["metrics"]["mAP"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if report.get("reference"):
        ax.axhline(100 * report["reference"]["metrics"]["mAP"], color="k", ls="--", lw=1, label="float reference mAP")
        ax.legend(fontsize=7)  # only when there is a labelled line
    files.append(
        save_plot(
            fig,
            ax,
            folder / "accuracy_latency.png",
            f"median latency (ms, {report['device']}, {report['threads']} threads)",
            "mAP (%)",
            "accuracy vs latency (marker size ~ file size)",
            legend=False,
        )
    )
    return files


def write_eval_report(report: dict, out: Path, raw: Path | None = None, force: bool = False) -> Path:
    out = Path(out)
    with staged_folder(out, force) as stage:
        if raw is not None:
            shutil.copytree(raw, stage / "raw")
        report["plots"] = plot_eval(report, stage)
        (stage / "report.json").write_text(json.dumps(report, indent=2))
        write_markdown_and_html(stage, eval_markdown(report), "mobilereid evaluation", report["plots"])
    return out


def write_markdown_and_html(folder: Path, markdown: str, title: str, plots: list[str]) -> None:
    """``report.md`` and ``report.html`` (the same text as one self-contained page, plots embedded: html_report.py)."""
    from .html_report import render_html

    (folder / "report.md").write_text(markdown)
    (folder / "report.html").write_text(render_html(markdown, title, [folder / p for p in plots]))


def pipeline_markdown(final: dict) -> str:
    st = final["stages"]
    lines = [
        "# mobilereid pipeline report",
        "",
        f"Work folder `{final['workdir']}`; wall time {final['wall_seconds'] / 60:.1f} min for this run "
        "(stages that were up to date were skipped; their own times are in report.json).",
        "",
    ]
    lines += [
        "## Training (float models, torch)",
        "",
        "| model | Rank-1 | Rank-5 | mAP | mINP | train time s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in st.items():
        if name.startswith("train_") and "metrics" in s:
            m = s["metrics"]
            lines.append(
                f"| {name[6:]} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['mAP'])} | {_pct(m['mINP'])} "
                f"| {s['seconds']:.0f} |"
            )
    if "compress" in st:
        b, a = st["compress"]["before"], st["compress"]["after"]
        lines += [
            "",
            "## Compression (patch elimination + AMG heads + MLP units + K/V tokens)",
            "",
            "| | before | after |",
            "|---|---|---|",
            f"| parameters (M) | {b['params'] / 1e6:.3f} | {a['params'] / 1e6:.3f} |",
            f"| executed GMAC | {b['gmacs']:.4f} | {a['gmacs']:.4f} "
            f"({100 * (1 - a['gmacs'] / b['gmacs']):.1f}% fewer) |",
            f"| patch tokens | {b['patch_tokens_kept']}/{b['patch_tokens']} "
            f"| {a['patch_tokens_kept']}/{a['patch_tokens']} |",
            f"| heads per layer | {' '.join(map(str, b['heads_per_layer']))} "
            f"| {' '.join(map(str, a['heads_per_layer']))} |",
            f"| K/V tokens per layer | all "
            f"| {' '.join('all' if t is None else str(t) for t in a['kv_tokens_per_layer'])} |",
        ]
        if "mlp_hidden_per_layer" in a and a["mlp_hidden_per_layer"] != b.get("mlp_hidden_per_layer"):
            lines.append(
                f"| MLP hidden units per layer | {' '.join(map(str, b['mlp_hidden_per_layer']))} | "
                f"{' '.join(map(str, a['mlp_hidden_per_layer']))} |"
            )
        for key, label in (("rank1", "Rank-1"), ("mAP", "mAP"), ("mINP", "mINP")):
            if key in b and key in a:
                lines.append(f"| {label} | {_pct(b[key])} | {_pct(a[key])} |")
    for name, s in st.items():
        if name.startswith("quant_finetune_") and s.get("after") and s.get("before"):
            b, a, last = s["before"], s["after"], s["history"][-1]
            lines += [
                "",
                f"## Quantization fine-tuning of `{name.removeprefix('quant_finetune_')}` "
                "(consistency between its INT8 and float embeddings)",
                "",
                "| | before | after |",
                "|---|---|---|",
            ]
            lines += [
                f"| float {label} | {_pct(b[key])} | {_pct(a[key])} |"
                for key, label in (("rank1", "Rank-1"), ("mAP", "mAP"))
            ]
            lines.append(
                "| fake-quant vs float embedding cosine (last training epoch, training batches) | "
                f"| {last['embedding_cosine']:.4f} |"
            )
            guard = s.get("guard") or {}
            if guard.get("active"):
                lines += [
                    "",
                    f"Guard: float mAP may fall at most {100 * guard['max_map_drop']:.2f} points "
                    f"(checked every {guard['every']} "
                    "epochs and after the last, on query/gallery): "
                    + (
                        (
                            f"stopped after epoch {guard['gave_up_epoch']}, "
                            f"more than {100 * guard['give_up_drop']:.2f} points down"
                            if guard.get("gave_up_epoch")
                            else "the last epoch failed it"
                        )
                        + f"; kept the weights of epoch {guard['kept_epoch']} (mAP after each check: "
                        + ", ".join(f"{c['epoch']}: {100 * c['mAP']:.2f}" for c in guard["checks"])
                        + ")."
                        if guard["checks"] and not guard["checks"][-1]["passed"]
                        else f"the final weights passed ({len(guard['checks'])} checks, "
                        f"{sum(not c['passed'] for c in guard['checks'])} failed on the way)."
                    ),
                ]
    for name, s in st.items():
        if name.startswith("export_") and s.get("notes"):
            lines += ["", f"## Export notes of `{name.removeprefix('export_')}`", "", "```"] + s["notes"] + ["```"]
    for name, rep in final["evaluations"].items():
        lines += ["", f"## Artifacts of `{name}`", ""]
        lines += eval_markdown(rep).splitlines()[2:]
    lines += [
        "",
        "Not verified here: real phones, Coral hardware and microcontrollers (latencies are host CPU latencies).",
        "",
    ]
    return "\n".join(lines)


def plot_pipeline(final: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rep in final["evaluations"].items():
        timed = [r for r in rep["artifacts"] if r.get("latency")]
        xs = [r["latency"]["p50_ms"] for r in timed]
        ys = [100 * r["metrics"]["mAP"] for r in timed]
        ax.scatter(xs, ys, label=name)
        for r, x, y in zip(timed, xs, ys):
            ax.annotate(
                f"{r['runtime']} {r['precision']}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    return [
        save_plot(
            fig,
            ax,
            folder / "accuracy_latency_all.png",
            "median latency per image (ms, host CPU)",
            "mAP (%)",
            "every artifact: accuracy vs latency",
            legend=True,
        )
    ]


def write_pipeline_report(final: dict, out: Path) -> Path:
    out = Path(out)
    with staged_folder(out) as stage:
        final["plots"] = plot_pipeline(final, stage)
        for name in final["evaluations"]:
            src = Path(final["workdir"]) / f"evaluate_{name}"
            for png in ("cmc.png", "accuracy_latency.png"):
                if (src / png).is_file():
                    shutil.copy(src / png, stage / f"{name}_{png}")
                    final["plots"].append(f"{name}_{png}")
        (stage / "report.json").write_text(json.dumps(final, indent=2, default=str))
        write_markdown_and_html(stage, pipeline_markdown(final), "mobilereid pipeline report", final["plots"])
    return out


def write_rows_table(out: Path, stem: str, meta: dict, rows: list[dict], markdown: str) -> None:
    """``<stem>.json`` (meta + rows) and ``<stem>.md``, moved into `out` together, then the table printed (the
    benchmark scripts' output)."""
    with staged_folder(out) as stage:
        (stage / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
        (stage / f"{stem}.md").write_text(markdown)
    print(markdown)
