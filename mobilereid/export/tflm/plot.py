"""One PNG per TFLite Micro artifact: where its flash and its arena go, against the board's budgets.

Two stacked bars (flash, RAM) in KB: flash split into int8 weights, int32 biases, quantization parameters and the
rest (graph, metadata); RAM split into TFLM's planned tensors and its persistent parts; a tick marks each budget
(the board profile minus its reserve). Written next to the artifact by the tflm exporter.
"""

from __future__ import annotations


def plot_tflm_memory(t: dict, title: str) -> bytes:
    """The PNG bytes (the exporter writes them atomically, like every artifact)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, size = t["board"], t["size"]
    kb = 1024.0
    flash = [(f"{dtype} constants", n) for dtype, n in size["constant_bytes"].items()]
    flash += [
        ("quantization parameters", size["quantization_parameter_bytes"]),
        ("graph and metadata", size["other_bytes"]),
    ]
    measured = t["arena"]["measured"]
    ram = [("planned tensors (live activations)", measured["planned_head_bytes"])]
    tail = sorted(measured["tail_parts"].items(), key=lambda kv: -kv[1])
    ram += [(f"persistent: {name}", n) for name, n in tail if n >= 1024]
    ram.append(("persistent: the rest (< 1 KB each)", sum(n for _, n in tail if n < 1024)))
    ram.append(("bisection slack", max(0, t["arena_bytes"] - measured["total_bytes"])))
    budgets = {"flash": (b["flash_kb"] - b["reserve_flash_kb"]), "RAM (arena)": (b["ram_kb"] - b["reserve_ram_kb"])}
    fig, ax = plt.subplots(figsize=(8, 3.2))
    colours = plt.get_cmap("tab20").colors
    for row, (label, parts) in enumerate((("flash", flash), ("RAM (arena)", ram))):
        left = 0.0
        for i, (name, n) in enumerate(parts):
            if n < 512:
                continue
            ax.barh(
                row,
                n / kb,
                left=left,
                color=colours[(i + 6 * row) % len(colours)],
                edgecolor="white",
                label=f"{label}: {name} ({n / kb:.0f} KB)",
            )
            left += n / kb
        ax.plot([budgets[label]] * 2, [row - 0.45, row + 0.45], color="black", linewidth=2)
        ax.annotate(
            f"budget {budgets[label]:.0f} KB", (budgets[label], row + 0.45), fontsize=7, ha="center", va="bottom"
        )
    ax.set_yticks([0, 1], ["flash", "RAM (arena)"])
    ax.set_xlabel("KB")
    ax.set_title(f"{title}: TFLite Micro memory on {b['name']}", fontsize=9)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()
