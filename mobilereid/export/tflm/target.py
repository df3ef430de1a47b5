"""TFLite Micro: a full-integer model, checked op by op, with a measured arena and C sources for a TFLM project.

* Ops: every operator must be one TFLite Micro registers (table below, TFLM's op resolver list); otherwise export
  fails naming the op (GELU, for instance, has no TFLM kernel).
* Arena: found by running the model in the real TFLite Micro interpreter (PyPI ``tflite-micro``) and bisecting
  the smallest arena, to 1 KB, with which it allocates *and* runs; outputs are compared with LiteRT on the same
  inputs: with LiteRT's reference kernels they must agree within 1 LSB (TFLM uses the same reference maths);
  the difference to LiteRT's default XNNPACK kernels (a few LSB: different rounding) is reported.
* Memory: the operators are put in the order of least peak live memory (memory.py, Liberis & Lane 2019), the
  flatbuffer is slimmed of what TFLM never reads (slim.py) and given an offline arena plan in which residual ADDs
  write over a dying input (offline_plan.py); all three keep the outputs bit-identical, which is checked in the
  TFLM interpreter. The report names the tensors live at the arena's peak, TFLM's own split of the
  arena (planned tensors vs persistent op data) and the arena the converter's order would have needed.
* Fit: the board profile (mobilereid/recipes/boards.toml) gives flash and RAM minus reserves; export fails when the
  model or the arena does not fit, saying by how much.
* C sources: ``<stem>_model_data.h/.cc`` with the model as a 16-byte-aligned byte array, its length, input/output
  shapes and quantization parameters and the arena size, ready to drop into a TFLM project.
* Latency is measured in the TFLM interpreter on the host and labelled as host latency (no MCU here); next to it an
  MCU latency *estimate* from the MACs and the board profile's assumed int8 MACs per cycle and clock.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from ...errors import ExportError
from ...filesafety import Workdir
from ..common import ExportJob, _write_json, atomic_write_bytes, verify_artifact, write_sidecar
from ..recipes import RECIPE_DIR
from ..tflite.ops import op_names
from ..tflite.size import size_breakdown
from ..tflite.target import build_tflite_variants, self_describing
from .memory import measured_arena_sections, peak_breakdown, reorder_for_memory
from .offline_plan import plan_offline
from .plot import plot_tflm_memory
from .slim import slim_for_micro

TFLM_OPS = {
    "ABS",
    "ADD",
    "ADD_N",
    "ARG_MAX",
    "ARG_MIN",
    "AVERAGE_POOL_2D",
    "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND",
    "BROADCAST_ARGS",
    "BROADCAST_TO",
    "CAST",
    "CEIL",
    "CONCATENATION",
    "CONV_2D",
    "COS",
    "CUMSUM",
    "DEPTH_TO_SPACE",
    "DEPTHWISE_CONV_2D",
    "DEQUANTIZE",
    "DIV",
    "ELU",
    "EQUAL",
    "EXP",
    "EXPAND_DIMS",
    "FILL",
    "FLOOR",
    "FLOOR_DIV",
    "FLOOR_MOD",
    "FULLY_CONNECTED",
    "GATHER",
    "GATHER_ND",
    "GREATER",
    "GREATER_EQUAL",
    "HARD_SWISH",
    "L2_NORMALIZATION",
    "L2_POOL_2D",
    "LEAKY_RELU",
    "LESS",
    "LESS_EQUAL",
    "LOG",
    "LOGICAL_AND",
    "LOGICAL_NOT",
    "LOGICAL_OR",
    "LOGISTIC",
    "LOG_SOFTMAX",
    "MAXIMUM",
    "MAX_POOL_2D",
    "MEAN",
    "MINIMUM",
    "MIRROR_PAD",
    "MUL",
    "NEG",
    "NOT_EQUAL",
    "PACK",
    "PAD",
    "PADV2",
    "PRELU",
    "QUANTIZE",
    "REDUCE_MAX",
    "RELU",
    "RELU6",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "ROUND",
    "RSQRT",
    "SELECT_V2",
    "SHAPE",
    "SIN",
    "SLICE",
    "SOFTMAX",
    "SPACE_TO_BATCH_ND",
    "SPACE_TO_DEPTH",
    "SPLIT",
    "SPLIT_V",
    "SQRT",
    "SQUARE",
    "SQUARED_DIFFERENCE",
    "SQUEEZE",
    "STRIDED_SLICE",
    "SUB",
    "SUM",
    "SVDF",
    "TANH",
    "TRANSPOSE",
    "TRANSPOSE_CONV",
    "UNPACK",
    "ZEROS_LIKE",
}


def load_board(name: str) -> dict:
    """A profile from mobilereid/recipes/boards.toml by name, or the first table of a user's TOML file given as a
    path."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise ExportError(f"{path}: board profile file not found")
        boards = tomllib.loads(path.read_text())
        if not boards:
            raise ExportError(f"{path}: no board table in the file")
        name = next(iter(boards))
    else:
        path = RECIPE_DIR / "boards.toml"
        boards = tomllib.loads(path.read_text())
    if name not in boards:
        raise ExportError(f"unknown board {name!r}; profiles in {path}: {', '.join(boards)}")
    b = dict(boards[name])
    for key in ("flash_kb", "ram_kb"):
        if not isinstance(b.get(key), (int, float)) or b[key] <= 0:
            raise ExportError(f"{path}: board {name!r} needs a positive {key}")
    b.setdefault("reserve_flash_kb", 0)
    b.setdefault("reserve_ram_kb", 0)
    b["name"] = name
    return b


def check_ops(model_bytes: bytes, stem: str) -> list[str]:
    ops = op_names(model_bytes)
    bad = sorted({o for o in ops if o not in TFLM_OPS})
    if bad:
        raise ExportError(
            f"{stem}: TFLite Micro has no kernel for {', '.join(bad)}; this model cannot run on a microcontroller"
        )
    return ops


_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
interp = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
d = interp.get_input_details(0)
interp.set_input(np.zeros(d["shape"], d["dtype"]), 0)
interp.invoke()
"""


def _runs(path: Path, arena: int) -> bool:
    """Does the model allocate and run with this arena? Probed in a child process: the TFLM Python interpreter
    can crash outright (not just raise) when a tail allocation does not fit."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(arena)], capture_output=True, timeout=300)
    return proc.returncode == 0


def find_arena(path: Path, start: int = 16 << 10, limit: int = 64 << 20, step: int = 1024) -> int:
    """Smallest arena (multiple of `step`) with which the TFLM interpreter allocates and runs the model."""
    hi = start
    while not _runs(path, hi):
        hi *= 2
        if hi > limit:
            raise ExportError(
                f"{path.name}: the TFLite Micro interpreter could not run it even with a {limit >> 20} MB arena"
            )
    lo = hi // 2 if hi > start else 0
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        if _runs(path, mid):
            hi = mid
        else:
            lo = mid
    return hi


def c_sources(stem: str, data: bytes, in_spec: dict, out_spec: dict, arena: int) -> tuple[str, str]:
    ident = "".join(c if c.isalnum() else "_" for c in stem)
    guard = f"{ident.upper()}_MODEL_DATA_H_"

    def q(spec):
        qq = spec["quantization"] or {"scale": 1.0, "zero_point": 0}
        return qq["scale"], qq["zero_point"]

    (isc, izp), (osc, ozp) = q(in_spec), q(out_spec)
    dims = lambda shape: ", ".join(str(int(s)) for s in shape)
    header = f"""// Generated by mobilereid: TFLite Micro model {stem} (full-integer int8).
#ifndef {guard}
#define {guard}

#include <cstddef>
#include <cstdint>

extern const unsigned char {ident}_model_data[];
extern const unsigned int {ident}_model_data_len;

constexpr size_t {ident}_arena_size = {arena};  // measured in the TFLite Micro interpreter (host), bytes
constexpr int {ident}_input_dims[] = {{{dims(in_spec["shape"])}}};  // NHWC
constexpr float {ident}_input_scale = {isc!r}f;
constexpr int {ident}_input_zero_point = {izp};
constexpr int {ident}_output_dims[] = {{{dims(out_spec["shape"])}}};
constexpr float {ident}_output_scale = {osc!r}f;
constexpr int {ident}_output_zero_point = {ozp};

#endif  // {guard}
"""
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    body = ",\n  ".join(rows)
    source = f"""// Generated by mobilereid: TFLite Micro model {stem}.
#include "{stem}_model_data.h"

alignas(16) const unsigned char {ident}_model_data[] = {{
  {body}
}};
const unsigned int {ident}_model_data_len = {len(data)};
"""
    return header, source


def _quantized_inputs(job: ExportJob, in_spec: dict) -> list[np.ndarray]:
    from ...data.preprocess import quantize

    q = in_spec["quantization"]
    return [
        np.ascontiguousarray(quantize(img.transpose(1, 2, 0)[None], q["scale"], q["zero_point"])) for img in job.verify
    ]


def _litert_interpreters(job: ExportJob, data: bytes):
    """LiteRT with its default kernels (XNNPACK) and with its reference kernels (what TFLM's kernels reproduce)."""
    from ...runtimes import litert_interpreter_class

    Interpreter = litert_interpreter_class()
    lite = Interpreter(model_content=data)
    try:
        lite.allocate_tensors()
    except RuntimeError as exc:
        raise ExportError(
            f"{job.stem}: LiteRT's XNNPACK delegate cannot prepare the full-integer model "
            f"({' '.join(str(exc).split())[:160]}); no TFLite Micro artifact written"
        ) from None
    try:
        from ai_edge_litert.interpreter import OpResolverType

        ref = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        ref.allocate_tensors()
    except ImportError:
        ref = None
    return lite, ref


def _run_litert(interp, x: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"]).astype(np.int32)


def _run_micro(interp, x: np.ndarray) -> np.ndarray:
    interp.set_input(x, 0)
    interp.invoke()
    return interp.get_output(0).astype(np.int32)


def compare_runtimes(
    job: ExportJob, full: bytes, final: bytes, final_path: Path, arena: int, inputs: list[np.ndarray]
) -> dict:
    """TFLM runs the artifact; its outputs must equal TFLM's on the model before slimming (bit for bit) and stay
    within 1 LSB of LiteRT's reference kernels (the same reference maths); the gap to LiteRT's XNNPACK kernels
    (different rounding) is reported. Returns the LSB figures and the host latencies of the artifact."""
    from tflite_micro.python.tflite_micro import runtime

    micro = runtime.Interpreter.from_file(str(final_path), arena_size=arena)
    unslimmed = runtime.Interpreter.from_bytes(full, arena_size=arena + (256 << 10)) if final != full else None
    lite, ref = _litert_interpreters(job, full)
    max_lsb = max_lsb_ref = 0
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        a = _run_micro(micro, x)
        times.append((time.perf_counter() - t0) * 1000)
        if unslimmed is not None and not np.array_equal(a, _run_micro(unslimmed, x)):
            raise ExportError(
                f"{job.stem}: the slimmed / offline-planned TFLite Micro model gives different outputs from the "
                "converted one; set [micro] slim = false or inplace_add = false in the recipe and report this"
            )
        max_lsb = max(max_lsb, int(np.abs(a - _run_litert(lite, x)).max()))
        if ref is not None:
            max_lsb_ref = max(max_lsb_ref, int(np.abs(a - _run_litert(ref, x)).max()))
    if ref is not None and max_lsb_ref > 1:
        raise ExportError(
            f"{job.stem}: TFLite Micro output differs from LiteRT's reference kernels by {max_lsb_ref} LSB "
            "(more than 1)"
        )
    return {
        "max_output_lsb_vs_litert": max_lsb,
        "max_output_lsb_vs_litert_reference_kernels": max_lsb_ref,
        "slim_outputs_identical": unslimmed is not None,
        "host_latency_ms_median": float(np.median(times)),
    }


def mcu_latency_estimate(board: dict, macs: int) -> dict | None:
    """MACs / (int8 MACs per cycle x clock): an estimate under the board profile's stated assumption, not a
    measurement."""
    clock, per_cycle = board.get("clock_mhz"), board.get("int8_macs_per_cycle")
    if not clock or not per_cycle:
        return None
    return {
        "ms": macs / (per_cycle * clock * 1e6) * 1e3,
        "clock_mhz": clock,
        "int8_macs_per_cycle": per_cycle,
        "note": f"estimate, not measured: {macs / 1e6:.1f} MMAC at an assumed {per_cycle} int8 MAC/cycle "
        f"(CMSIS-NN-class kernels) and {clock} MHz "
        "(mobilereid/recipes/boards.toml says where the assumption comes from)",
    }


def _arrange_memory(job: ExportJob, converted: bytes, micro: dict, tmp: Path, in_spec: dict):
    """Operator order, slimming and the offline arena plan as the recipe's ``[micro]`` asks; the arena measured with
    and without each step that changes it; the outputs checked against the converted model. Returns (artifact
    bytes, arena, runtime checks, memory breakdown, order record, slim record, plan record)."""
    inplace = bool(micro["inplace_add"])
    full, order = (
        reorder_for_memory(converted, inplace_add=inplace)
        if micro["reorder_operators"]
        else (converted, {"reordered": False})
    )

    def finish(model: bytes) -> tuple[bytes, bytes, dict | None, dict | None]:
        """Slimmed and planned as the recipe asks: (planned, slimmed only, slim record, plan record)."""
        slimmed, slim_record = slim_for_micro(model) if micro["slim"] else (model, None)
        planned, plan_record = plan_offline(slimmed, names_from=model) if inplace else (slimmed, None)
        return planned, slimmed, slim_record, plan_record

    data, unplanned_data, slim, plan = finish(full)
    final_path = tmp / "final.tflite"
    final_path.write_bytes(data)
    arena = find_arena(final_path)
    checks = compare_runtimes(job, full, data, final_path, arena, _quantized_inputs(job, in_spec))
    planned = bool(plan and plan["planned"])
    memory = {
        "peak": plan["peak"] if planned else peak_breakdown(data, names_from=full),
        "measured": measured_arena_sections(final_path, arena),
    }
    if planned:  # the same model left to TFLM's own planner: what writing the ADDs in place saved, measured
        unplanned = tmp / "unplanned.tflite"
        unplanned.write_bytes(unplanned_data)
        plan["arena_bytes_without_plan"] = find_arena(unplanned, start=arena)
        plan["arena_bytes"] = arena
    if order.get("reordered"):  # the converter's order, slimmed and planned alike: what reordering saved
        as_converted = tmp / "converter_order.tflite"
        as_converted.write_bytes(finish(converted)[0])
        order["arena_bytes_converter_order"] = find_arena(as_converted, start=arena)
    order["arena_bytes"] = arena
    return data, arena, checks, memory, order, slim, plan


def export_tflm(job: ExportJob, recipe: dict, board_name: str | None = None) -> list[dict]:
    board = load_board(board_name or recipe.get("board", "cortex-m7"))
    qcfg = dict(recipe.get("int8", {}))
    micro = {
        "reorder_operators": True,
        "slim": True,
        "fold_projections": False,
        "inplace_add": True,
        **recipe.get("micro", {}),
    }
    if qcfg.get("io_dtype", "int8") != "int8" or qcfg.get("float_ops"):
        raise ExportError(f"{recipe['source']}: TFLite Micro needs full-integer int8 models with int8 IO")
    with Workdir(job.out_dir, "tflm") as tmp:
        folded = 0
        if micro["fold_projections"]:
            from ..residual_fold import fold_residual_projections

            model, folded = fold_residual_projections(job.model)
            if folded:  # its own conversion: the other targets keep the model (and SavedModel) as it is
                job = dataclasses.replace(job, model=model, saved_model=None, scratch=tmp)
        converted = build_tflite_variants(job, ["int8"], qcfg, tmp)["int8"]
        ops = check_ops(converted, job.stem)
        # the description travels inside the flatbuffer (and so inside the C array); it counts in the flash budget
        converted, description = self_describing(
            job, converted, target="tflm", runtime="tflite-micro", precision="int8", recipe=recipe
        )
        in_spec, out_spec = description["input"], description["output"]
        data, arena, checks, memory, order, slim, plan = _arrange_memory(job, converted, micro, tmp, in_spec)
    flash_budget = (board["flash_kb"] - board["reserve_flash_kb"]) * 1024
    ram_budget = (board["ram_kb"] - board["reserve_ram_kb"]) * 1024
    problems = []
    if len(data) > flash_budget:
        problems.append(
            f"model needs {len(data) / 1024:.0f} KB flash, {board['name']} leaves {flash_budget / 1024:.0f} KB "
            f"(short by {(len(data) - flash_budget) / 1024:.0f} KB)"
        )
    if arena > ram_budget:
        problems.append(
            f"arena needs {arena / 1024:.0f} KB RAM, {board['name']} leaves {ram_budget / 1024:.0f} KB "
            f"(short by {(arena - ram_budget) / 1024:.0f} KB)"
        )
    if problems:
        raise ExportError(f"{job.stem} does not fit board {board['name']}: " + "; ".join(problems))
    out = job.out_dir / f"{job.stem}_tflm_int8.tflite"
    atomic_write_bytes(out, data)
    header, source = c_sources(job.stem, data, in_spec, out_spec, arena)
    atomic_write_bytes(job.out_dir / f"{job.stem}_model_data.h", header.encode())
    atomic_write_bytes(job.out_dir / f"{job.stem}_model_data.cc", source.encode())
    from ...flops import count_macs

    macs = int(count_macs(job.model))
    tflm = {
        "board": board,
        "flash_bytes": len(data),
        "arena_bytes": arena,
        "macs": macs,
        "ops": sorted(set(ops)),
        **checks,
        "latency_note": "TFLite Micro interpreter on the host CPU, not an MCU",
        "mcu_latency_estimate": mcu_latency_estimate(board, macs),
        "operator_order": order,
        "folded_projections": folded,
        "slim": slim,
        "offline_plan": plan,
        "size": size_breakdown(data),
        "arena": memory,
    }
    meta = write_sidecar(job, out, description={**description, "tflm": tflm})
    verification = verify_artifact(job, out, meta, recipe["verify"]["min_cosine"])
    _write_json(job.out_dir / f"{job.stem}_tflm_report.json", {**tflm, "verification": verification})
    atomic_write_bytes(job.out_dir / f"{job.stem}_tflm_memory.png", plot_tflm_memory(tflm, out.name))
    return [{"artifact": out, "precision": "int8", "verification": verification, "tflm": tflm}]


def tflm_notes(t: dict) -> list[str]:
    """The export notes of a TFLM artifact, for people: fit, arena breakdown, what reordering and slimming saved,
    agreement with LiteRT, host latency and the MCU estimate (labelled as such)."""
    kb = lambda n: f"{n / 1024:.0f} KB"  # noqa: E731
    b = t["board"]
    lines = [
        f"TFLite Micro ({b['name']}): "
        f"flash {kb(t['flash_bytes'])} of {kb((b['flash_kb'] - b['reserve_flash_kb']) * 1024)}, "
        f"arena {kb(t['arena_bytes'])} of {kb((b['ram_kb'] - b['reserve_ram_kb']) * 1024)}, {t['macs'] / 1e6:.1f} MMAC"
    ]
    arena = t.get("arena")
    if arena:
        m, p = arena["measured"], arena["peak"]
        parts = ", ".join(
            f"{k} {kb(v)}" for k, v in sorted(m["tail_parts"].items(), key=lambda kv: -kv[1]) if v >= 1024
        )
        lines.append(
            f"  arena = planned tensors {kb(m['planned_head_bytes'])} "
            f"+ persistent {kb(m['persistent_tail_bytes'])} ({parts})"
        )
        live = "; ".join(
            f"{'x'.join(str(s) for s in r['shape'])} {kb(r['bytes'])} from {r['written_by']}" for r in p["live"]
        )
        lines.append(
            f"  peak at op #{p['step']} {p['op']}: {p['live_tensors']} tensors live, {kb(p['peak_bytes'])}: {live}"
        )
    plan = t.get("offline_plan") or {}
    if plan.get("planned"):
        lines.append(
            f"  in-place adds: {plan['inplace_adds']} ADDs write over a dying input (offline arena plan): arena "
            f"{kb(plan['arena_bytes_without_plan'])} with TFLM's own plan -> {kb(plan['arena_bytes'])} (same outputs; "
            f"the plan adds {plan['flash_bytes_added']} bytes of flash)"
        )
    order = t.get("operator_order") or {}
    if order.get("reordered"):
        lines.append(
            f"  operator reordering: arena {kb(order['arena_bytes_converter_order'])} in the converter's order -> "
            f"{kb(order['arena_bytes'])} ({order['method']} least-peak order, same outputs)"
        )
    if t.get("slim"):
        s = t["slim"]
        lines.append(
            f"  slimmed for TFLM: {kb(s['bytes_before'])} -> {kb(s['bytes_after'])} "
            f"({s['zero_point_entries']} zero points, "
            f"{s['bias_quantization_entries']} bias quantization entries, names, "
            f"{s['unused_buffers']} unused buffers dropped; "
            "bit-identical outputs in TFLM)"
        )
    lines.append(
        f"  max {t['max_output_lsb_vs_litert_reference_kernels']} LSB from LiteRT reference kernels "
        f"({t['max_output_lsb_vs_litert']} from XNNPACK); host latency {t['host_latency_ms_median']:.1f} ms "
        "(TFLM interpreter on this x86 host, not an MCU)"
    )
    est = t.get("mcu_latency_estimate")
    if est:
        lines.append(f"  MCU latency ~{est['ms']:.0f} ms on {b['name']}: {est['note']}")
    return lines
