"""`mobilereid quant-sensitivity`: which layers make a TFLite INT8 model drift, and which recipe to use instead.

1. **Per-layer sensitivity.** TensorFlow's QuantizationDebugger runs the float and the quantized graph side by side
   on held-out images and records, for every quantized tensor, the error of its quantized value. The score is the
   RMSE of that error divided by the tensor's quantization scale (TensorFlow's own recommendation: an error much
   larger than one quantization step means the range or the op does not suit int8). Layers are ranked by it.
2. **Candidate recipes, measured.** Full INT8 (int8 IO) with each activation-range rule (`activation_ranges`:
   the converter's extremes over all images, or the mean of per-image extremes); INT8 with the k worst layers kept
   in float (k = 1, 2, 4, 8, via the debugger's deny-list; the model then has float IO around them); dynamic-range
   (int8 weights, float activations); and fp32. Each candidate is converted, run in the LiteRT interpreter
   (XNNPACK, the recipe's thread count) on the held-out images and timed (median of repeated single-image runs)
   side by side in one process, with embedding cosine against the float torch model.
   **ViTs** (their TFLite route is litert-torch + ai-edge-quantizer, which TensorFlow's debugger cannot inspect; the
   graph is the integer-friendly one of `integer_friendly`): dynamic-range and fp32, then for each range rule
   (ai-edge-quantizer's moving average, the extremes of all images) full INT8, int16x8, INT8 with int16 activations
   for one op type at a time, and a greedy search that adds op types in the order of their measured gain until the
   budget is met (`litert_torch_candidates`); no per-layer ranking (said in the report). Every static candidate is
   checked for float ops left in its graph.
3. **ExecuTorch candidates, measured the same way.** Static INT8 (PT2E, XNNPACKQuantizer) with each activation-range
   rule, dynamic INT8 and fp32, lowered to XNNPACK and run in the ExecuTorch runtime on the same images and threads.
   ViTs: static INT8 for every op XNNPACKQuantizer takes, for the linears only, and for the linears with ``mlp.fc2``
   dynamic (the shipped recipe's static ``int8``), then dynamic INT8 and fp32.
   (XNNPACKQuantizer's dynamic mode covers only part of a CNN: the trained sclnet_small's dynamic .pte is 1.26 MB
   against 2.24 MB fp32 and 0.74 MB static int8, and it runs slower than fp32.)
4. **The choice, per runtime.** The fastest candidate whose mean cosine meets the drift budget; written as recipe
   TOMLs that `mobilereid export --target tflite|executorch --recipe` use directly (TFLite keys ``variants``,
   ``int8.float_nodes``, ``int8.activation_ranges``, or ``converter`` and ``int8.int16_ops`` for ViTs; ExecuTorch
   ``variants`` (which names the mode), ``int8.activation_ranges``, ``int8.ops``, ``int8.dynamic_modules``). On
   LiteRT the fastest *full-integer* candidate (no float op) is chosen apart (``recipe_tflite_integer.toml``): that is
   the model an integer-only accelerator needs, however it compares on this x86 CPU, where dynamic-range int8
   usually wins.
5. **The float model's own noise sensitivity.** Mean cosine between the float embeddings of each held-out image and
   of the same image plus Gaussian noise of one grey level (sigma = 1/255 before normalisation). INT8 adds noise of
   about that size to every activation, so a model that already moves more than the drift budget under one grey
   level cannot meet it with static INT8 whatever the recipe; the report says so.

Not covered: a per-layer ranking for ExecuTorch (its PT2E flow has no per-layer debugger in the pinned stack), so
ExecuTorch candidates are whole-model recipes.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from ..console import console, progress, table
from ..errors import ExportError
from ..filesafety import Workdir
from ..models.checkpoint import load_model
from .activation_ranges import RULES as RANGE_RULES
from .common import cosine_rows
from .onnx_target import write_onnx
from .recipes import load_recipe
from .tflite.ops import float_compute_ops
from .tflite.target import calibrated_converter, convert_variant, image_dataset, io_specs, onnx_to_saved_model, quiet

ROUNDING_FLOOR = 12**-0.5  # RMSE of uniform rounding noise, in quantization steps


def layer_statistics(saved_model: Path, calib_nhwc: np.ndarray, debug_nhwc: np.ndarray, qcfg: dict) -> list[dict]:
    """Per quantized tensor: op, tensor name, RMSE/scale and the raw debugger columns, worst first."""
    import tensorflow as tf

    conv = calibrated_converter(saved_model, calib_nhwc, qcfg)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=image_dataset(debug_nhwc))
        debugger.run()
        buf = io.StringIO()
        debugger.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(r["scale"]) if r.get("scale") else 0.0
        mse = float(r["mean_squared_error"])
        rows.append(
            {
                "op": r["op_name"],
                "tensor": r["tensor_name"],
                "scale": scale,
                "rmse": mse**0.5,
                "rmse_over_scale": (mse**0.5) / scale if scale > 0 else float("inf"),
                "max_abs_error": float(r["max_abs_error"]),
                "num_elements": int(float(r["num_elements"])),
            }
        )
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows


def measure(
    model_bytes: bytes,
    verify_nchw: np.ndarray,
    reference: np.ndarray,
    threads: int,
    repeats: int,
    runtime: str = "litert",
    io: dict | None = None,
    retrieval=None,
) -> dict:
    """Cosine to the float model on every held-out image and the median/p90 single-image latency, in ``runtime``
    (LiteRT for .tflite bytes, whose IO is read from the model; ExecuTorch for .pte bytes, IO given by ``io``)."""
    from ..runtimes import RUNNERS

    if runtime == "litert":
        in_spec, out_spec = io_specs(model_bytes)
        io = {"input": in_spec, "output": out_spec}
    suffix = ".tflite" if runtime == "litert" else ".pte"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"candidate{suffix}"
        path.write_bytes(model_bytes)
        try:
            runner = RUNNERS[runtime](path, io, threads=threads)
        except (
            RuntimeError
        ) as exc:  # e.g. XNNPACK cannot prepare this int8 graph: the candidate is out, the study goes on
            return {
                "cosine_mean": -1.0,
                "cosine_min": -1.0,
                "p50_ms": -1.0,
                "p90_ms": -1.0,
                "size_bytes": len(model_bytes),
                "input_dtype": io["input"]["dtype"],
                "error": " ".join(str(exc).split())[:200],
            }
        emb = runner.embed(verify_nchw)
        scored = {"retrieval": retrieval.score(runner)} if retrieval is not None else {}
        x = runner.prepare(verify_nchw[0])
        for _ in range(3):
            runner.run_prepared(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.run_prepared(x)
            times.append((time.perf_counter() - t0) * 1000)
    cos = cosine_rows(emb, reference)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "p50_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "size_bytes": len(model_bytes),
        "input_dtype": io["input"]["dtype"],
        **scored,
    }


def noise_sensitivity(job, grey_levels: float = 1.0, seed: int = 0) -> float:
    """Mean cosine between the float embeddings of the held-out images and of the same images plus Gaussian noise
    of ``grey_levels`` (in 0-255 pixel units, before normalisation)."""
    import torch

    rng = np.random.default_rng(seed)
    std = np.asarray(job.spec.std, np.float32).reshape(1, 3, 1, 1)
    noisy = job.verify + rng.normal(0.0, 1.0, job.verify.shape).astype(np.float32) * (
        grey_levels * job.spec.scale / std
    )
    with torch.no_grad():
        moved = job.model(torch.from_numpy(noisy.astype(np.float32))).numpy()
    return float(cosine_rows(moved, job.reference).mean())


def executorch_plans(family: str) -> list[tuple[str, str, dict]]:
    """(name, variant, int8 settings) of each ExecuTorch candidate. CNNs: static INT8 with each activation-range rule.
    ViTs: static INT8 for every op XNNPACKQuantizer takes (linears, adds, muls, cats), for the linears only, and for the
    linears with the MLP's fc2 dynamic (the shipped ViT recipe's static int8)."""
    if family == "vit":
        static = [
            ("int8 static, all XNNPACK ops", "int8", {}),
            ("int8 static linears", "int8", {"ops": ["linear"]}),
            (
                "int8 static linears, fc2 dynamic",
                "int8",
                {"ops": ["linear"], "dynamic_modules": [r"mlp\.fc2$"]},
            ),
        ]
    else:
        static = [(f"int8, {r} ranges", "int8", {"activation_ranges": r}) for r in RANGE_RULES]
    return static + [("dynamic int8", "dynamic", {}), ("fp32", "fp32", {})]


def executorch_candidates(job, qcfg: dict, threads: int, repeats: int, advance, retrieval=None) -> list[dict]:
    """`executorch_plans`, lowered to XNNPACK and measured in the ExecuTorch runtime."""
    from .executorch_target import io_spec, lower

    io = io_spec(job)
    results = []
    for name, variant, extra in executorch_plans(job.family):
        cfg = {**{k: v for k, v in qcfg.items() if k not in ("ops", "dynamic_modules", "smooth_alpha")}, **extra}
        cfg["mode"] = "dynamic" if variant == "dynamic" else "static"  # the variant names the mode
        buffer, delegation = lower(job, variant != "fp32", cfg, f"candidate {name}")
        results.append(
            {
                "name": name,
                "variant": variant,
                "activation_ranges": cfg.get("activation_ranges", "default"),
                **{k: cfg[k] for k in ("ops", "dynamic_modules") if k in cfg},
                "delegated_subgraphs": delegation["delegated_subgraphs"],
                "not_delegated_ops": delegation["not_delegated_ops"],
                **measure(
                    buffer,
                    job.verify,
                    job.reference,
                    threads,
                    repeats,
                    runtime="executorch",
                    io=io,
                    retrieval=retrieval,
                ),
            }
        )
        advance()
    return results


def onnx2tf_candidates(
    job, qcfg: dict, threads: int, repeats: int, ks, tmp: Path, checkpoint: Path, retrieval=None
) -> tuple[list, list]:
    """CNNs (the onnx2tf route): the per-layer ranking, then full INT8 with each range rule, INT8 with the k worst
    layers float, dynamic and fp32, each converted by TensorFlow's converter and measured in LiteRT."""
    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))
    debug_nhwc = np.ascontiguousarray(job.verify[:16].transpose(0, 2, 3, 1))
    with progress("ONNX -> onnx2tf SavedModel", None):
        write_onnx(job, tmp / "model.onnx")
        saved = onnx_to_saved_model(job, tmp / "model.onnx", tmp / "saved_model")
    with progress("per-layer quantization error (QuantizationDebugger)", None):
        layers = layer_statistics(saved, calib_nhwc, debug_nhwc, qcfg)
    if not layers:
        raise ExportError(f"{checkpoint}: the quantization debugger found no quantized layers")
    rule = qcfg.get("activation_ranges", "default")
    candidates = (
        [(f"int8, {r} ranges", "int8", [], r) for r in RANGE_RULES]
        + [
            (f"int8, {k} worst layer(s) float", "int8", [l["tensor"] for l in layers[:k]], rule)
            for k in ks
            if k <= len(layers)
        ]
        + [("dynamic", "dynamic", [], rule), ("fp32", "fp32", [], rule)]
    )
    results = []
    measured = partial(onnx2tf_candidate, job, saved, calib_nhwc, qcfg, threads, repeats, retrieval)
    with progress("convert, verify and time each candidate", len(candidates)) as advance:
        for name, variant, nodes, ranges in candidates:
            results.append(measured(name, variant, nodes, ranges))
            advance()
    if retrieval is not None:
        results += query_ranked_candidates(measured, saved, calib_nhwc, qcfg, results, retrieval, ks)
    return layers, results


def onnx2tf_candidate(
    job, saved, calib_nhwc, qcfg, threads, repeats, retrieval, name: str, variant: str, nodes: list, ranges: str
) -> dict:
    """One onnx2tf-route candidate: converted by TensorFlow's converter (``nodes`` kept float), checked for float
    ops left, measured in LiteRT (and scored by retrieval when given)."""
    with quiet():
        data = convert_variant(saved, variant, calib_nhwc, {**qcfg, "float_nodes": nodes, "activation_ranges": ranges})
    left = dict(sorted(float_compute_ops(data).items())) if variant == "int8" else None
    return {
        "name": name,
        "variant": variant,
        "float_nodes": nodes,
        "activation_ranges": ranges,
        "full_integer": left == {},
        "float_ops_left": left,
        **measure(data, job.verify, job.reference, threads, repeats, retrieval=retrieval),
    }


def query_ranked_candidates(measured, saved, calib_nhwc, qcfg, results, retrieval, ks) -> list[dict]:
    """ΔmAP mode, onnx2tf route: the layers ranked again on the worst queries of full INT8 (the recipe's range rule)
    and their gallery matches, then INT8 with the k worst of those layers float, k = 1, 2, 4, ... until a candidate
    is within the mAP budget on the search half (greedy: no larger k is tried after that). ``measured``:
    `onnx2tf_candidate` bound to the job."""
    rule = qcfg.get("activation_ranges", "default")
    base = next(c for c in results if c["name"] == f"int8, {rule} ranges")
    if "retrieval" not in base:
        return []
    debug = np.ascontiguousarray(retrieval.worst_query_images(base).transpose(0, 2, 3, 1))
    with progress("per-layer error on the worst queries", None):
        ranked = layer_statistics(saved, calib_nhwc, debug, qcfg)
    out = []
    for k in ks:
        if k > len(ranked):
            break
        nodes = [l["tensor"] for l in ranked[:k]]
        out.append(measured(f"int8, {k} worst layer(s) on the worst queries float", "int8", nodes, rule))
        if retrieval.within(out[-1]):
            break
    return out


LAYOUT_OPS = {
    "RESHAPE",
    "TRANSPOSE",
    "SLICE",
    "STRIDED_SLICE",
    "CONCATENATION",
    "SPLIT",
    "PACK",
    "UNPACK",
    "GATHER",
    "GATHER_ND",
    "BROADCAST_TO",
    "PAD",
    "PADV2",
    "MIRROR_PAD",
    "SPACE_TO_DEPTH",
    "SELECT",
    "SELECT_V2",
    "DYNAMIC_UPDATE_SLICE",
}  # move values, compute nothing: not searched for int16 on their own


SEARCH_RULES = (
    "default",
    "minmax",
)  # litert-torch route: ai-edge-quantizer's moving average, the extremes of all images


def litert_torch_candidates(job, qcfg: dict, threads: int, repeats: int, budget: float, retrieval=None) -> list[dict]:
    """ViTs (the litert-torch route): dynamic-range and fp32 from the model as it is; then, from the integer-friendly
    graphs (`integer_friendly`, one per static precision), for each activation-range rule of ``SEARCH_RULES``, full
    INT8, int16x8, INT8 with int16 activations for one op type at a time (every computing op type of the graph that
    ai-edge-quantizer can give int16, and the layout ops as one group), then, in the order of those measured gains,
    INT8 with int16 for the best two, three, ... until the mean cosine meets ``budget`` (issue 15: int16 where int8
    does not hold, chosen by the measured sensitivity). Each candidate is measured in LiteRT and checked for float ops
    left in its graph."""
    from .tflite.litert_torch_route import (
        STATIC_BITS,
        calibrate,
        convert_fp32,
        convert_with_litert_torch,
        has_int16_config,
        integer_graph,
        quantize_static,
        widened,
    )
    from .tflite.ops import op_counts

    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))[: int(qcfg.get("calibration_images", 64))]
    with progress("litert-torch: convert the model and its integer-friendly graphs", None), quiet():
        models = convert_with_litert_torch(job.model, calib_nhwc, ["fp32", "dynamic"], threads, job.stem)
        headroom = float(qcfg.get("int16_headroom", 1.0))
        graphs = {
            v: convert_fp32(integer_graph(job, v, headroom)[0], calib_nhwc[:1], job.stem) for v in ("int8", "int16x8")
        }
        capable = [t for t in sorted(op_counts(graphs["int8"])) if has_int16_config(t)]
    layout = [t for t in capable if t in LAYOUT_OPS]
    units = [[t] for t in capable if t not in LAYOUT_OPS] + ([layout] if layout else [])

    def candidate(name: str, variant: str, rule: str, recorded: dict | None = None, int16_ops: list[str] = ()) -> dict:
        with quiet():
            data = (
                models[variant]
                if variant in models
                else quantize_static(
                    graphs[variant], recorded[variant], STATIC_BITS[variant], list(int16_ops), job.stem
                )
            )
        left = dict(sorted(float_compute_ops(data).items())) if variant in ("int8", "int16x8") else None
        return {
            "name": name,
            "variant": variant,
            "activation_ranges": rule,
            "int16_ops": list(int16_ops),
            "full_integer": left == {},
            "float_ops_left": left,
            **measure(data, job.verify, job.reference, threads, repeats, retrieval=retrieval),
        }

    def label(unit: list[str]) -> str:
        return f"layout ops ({', '.join(unit)})" if unit == layout and len(unit) > 1 else " + ".join(unit)

    per_rule = 2 + len(units) + max(len(units) - 1, 0)
    total = 2 + len(SEARCH_RULES) * per_rule
    results = []
    with progress("quantize, verify and time each candidate", total) as advance:
        for name, variant in (("dynamic", "dynamic"), ("fp32", "fp32")):
            results.append(candidate(name, variant, "-"))
            advance()
        for rule in SEARCH_RULES:
            with quiet():
                recorded = {v: calibrate(g, calib_nhwc, threads, job.stem, rule) for v, g in graphs.items()}
                recorded["int16x8"] = widened(recorded["int16x8"], headroom)
            done = len(results)
            results.append(candidate(f"int8 (full integer), {rule} ranges", "int8", rule, recorded))
            results.append(
                candidate(f"int16x8 (int16 activations, int8 weights), {rule} ranges", "int16x8", rule, recorded)
            )
            advance(2)
            singles = []
            for unit in units:
                singles.append(candidate(f"int8, {label(unit)} int16, {rule} ranges", "int8", rule, recorded, unit))
                advance()
            results += singles
            base = results[done]["cosine_mean"]
            gains = [
                c
                for c in sorted(singles, key=lambda c: -c["cosine_mean"])
                if c["cosine_mean"] > base and "error" not in c
            ]
            chosen, best = (list(gains[0]["int16_ops"]), gains[0]["cosine_mean"]) if gains else ([], budget)
            within = retrieval is None or retrieval.within(gains[0]) if gains else True
            for c in gains[1:]:  # the best single unit is measured already; add the next ones until within budget
                if best >= budget and within:
                    break
                chosen = chosen + c["int16_ops"]
                results.append(
                    candidate(
                        f"int8, {' + '.join(label(u) for u in units if set(u) <= set(chosen))} int16, {rule} ranges",
                        "int8",
                        rule,
                        recorded,
                        chosen,
                    )
                )
                best = results[-1]["cosine_mean"]
                within = retrieval is None or retrieval.within(results[-1])
                advance()
            advance(done + per_rule - len(results))  # the search stopped early: its remaining steps are not needed
    return results


def fastest_within(candidates: list[dict], budget: float, full_integer: bool = False, retrieval=None) -> dict | None:
    """The fastest candidate whose mean cosine meets ``budget`` (or, given ``retrieval``, whose mAP drop on the
    search half is within its budget); ``full_integer``: among those with no float op (the models integer-only
    accelerators need), whatever their speed on this CPU."""
    ok = [
        c
        for c in candidates
        if "error" not in c
        and (c.get("full_integer") or not full_integer)
        and (retrieval.within(c) if retrieval is not None else c["cosine_mean"] >= budget)
    ]
    return min(ok, key=lambda c: c["p50_ms"]) if ok else None


def run_sensitivity(
    checkpoint: str | Path,
    calib: str | Path,
    out_dir: str | Path,
    min_cosine: float | None = None,
    threads: int = 2,
    repeats: int = 30,
    ks: tuple[int, ...] = (1, 2, 4, 8),
    executorch: bool = True,
    max_map_drop: float | None = None,
) -> dict:
    """``max_map_drop``: choose by retrieval instead (`map_budget`): the fastest candidate whose mAP on the search
    half is at most that many points below the float model's; the cosine choice is kept beside it."""
    from . import make_job

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model, state = load_model(checkpoint)
    job = make_job(checkpoint, model, state, calib, out_dir, 64, 32, threads)
    recipe = load_recipe("tflite", job.family, None)
    qcfg = dict(recipe.get("int8", {}))
    budget = float(min_cosine if min_cosine is not None else recipe["verify"]["min_cosine"])
    retrieval = None
    if max_map_drop is not None:
        from .map_budget import RetrievalBudget

        with progress("float model on query/gallery (the mAP budget's reference)", None):
            retrieval = RetrievalBudget(job.model, calib, job.spec, max_map_drop)
    with Workdir(out_dir, "sensitivity") as tmp:
        if recipe.get("converter", "onnx2tf") == "litert-torch":
            layers, results = [], litert_torch_candidates(job, qcfg, threads, repeats, budget, retrieval)
        else:
            layers, results = onnx2tf_candidates(job, qcfg, threads, repeats, ks, tmp, checkpoint, retrieval)
        et_results = []
        if executorch:
            et_recipe = load_recipe("executorch", job.family, None)
            with progress(
                "ExecuTorch candidates: lower, verify and time", len(executorch_plans(job.family))
            ) as advance:
                et_results = executorch_candidates(
                    job, dict(et_recipe.get("int8", {})), threads, repeats, advance, retrieval
                )
    report = {
        "checkpoint": str(checkpoint),
        "family": job.family,
        "drift_budget": budget,
        "threads": threads,
        "noise_cosine_1_grey_level": noise_sensitivity(job),
        "layers": layers,
        "candidates": results,
        "chosen": fastest_within(results, budget, retrieval=retrieval),
        "chosen_full_integer": fastest_within(results, budget, full_integer=True, retrieval=retrieval),
        "executorch": {"candidates": et_results, "chosen": fastest_within(et_results, budget, retrieval=retrieval)}
        if executorch
        else None,
        "max_map_drop": max_map_drop,
        "candidates_tried": len(results) + len(et_results),
        "converter": recipe.get("converter", "onnx2tf"),
        "not_covered": "; ".join(
            (
                []
                if layers
                else [
                    "a per-layer ranking for the litert-torch route (TensorFlow's "
                    "QuantizationDebugger needs the TensorFlow converter)"
                ]
            )
            + (
                ["a per-layer ranking for ExecuTorch (whole-model ExecuTorch recipes only)"]
                if executorch
                else ["ExecuTorch candidates (run without them)"]
            )
        ),
    }
    if retrieval is not None:  # the cosine rule's picks beside the retrieval rule's, from the same measurements
        report["by_cosine"] = {
            "tflite": fastest_within(results, budget),
            "tflite_full_integer": fastest_within(results, budget, full_integer=True),
            "executorch": fastest_within(et_results, budget) if executorch else None,
        }
    write_outputs(report, out_dir, {"tflite": recipe, "executorch": et_recipe if executorch else None})
    return report


def write_outputs(report: dict, out_dir: Path, base_recipes: dict) -> None:
    """sensitivity.{json,md,png} and recipe_{tflite,executorch}.toml, written in a staged folder and moved in
    together."""
    from ..filesafety import staged_folder

    with staged_folder(out_dir) as stage:
        _write_files(report, stage, base_recipes)
    et = report.get("executorch") or {}
    for name, chosen in (
        ("recipe_tflite.toml", report["chosen"]),
        ("recipe_tflite_integer.toml", report.get("chosen_full_integer")),
        ("recipe_executorch.toml", et.get("chosen")),
    ):
        if chosen is None:  # a recipe left by an earlier run must not pass for this run's choice
            (out_dir / name).unlink(missing_ok=True)
    for title, cands in (
        ("INT8 candidates (LiteRT)", report["candidates"]),
        ("INT8 candidates (ExecuTorch)", et.get("candidates", [])),
    ):
        if cands:
            console.print(
                table(
                    title,
                    ["candidate", "KB", "p50 ms", "cosine", "budget"],
                    [
                        [
                            c["name"],
                            c["size_bytes"] / 1e3,
                            c["p50_ms"],
                            c["cosine_mean"],
                            "ok" if _within(c, report["drift_budget"], report.get("max_map_drop")) else "no",
                        ]
                        for c in cands
                    ],
                )
            )


def _within(c: dict, budget: float, max_map_drop: float | None) -> bool:
    """The budget rule a report was made with: the mAP budget when there was one, else the cosine budget."""
    if max_map_drop is not None:
        from .map_budget import within_map_budget

        return within_map_budget(c, max_map_drop)
    return c["cosine_mean"] >= budget


def _retrieval_cells(c: dict) -> str:
    r = c.get("retrieval")
    if not r:
        return " - | - | - |"
    return f" {r['search']['delta_map']:+.2f} | {r['held_out']['delta_map']:+.2f} | {r['search']['rank1_flips']} |"


def _candidate_rows(cands: list[dict], budget: float, max_map_drop: float | None = None) -> list[str]:
    integer = any("full_integer" in c for c in cands)
    mapped = max_map_drop is not None
    rows = [
        "| candidate | KB | p50 ms | p90 ms | cosine mean | cosine min |"
        + (" mAP drop, search | mAP drop, held out | rank-1 flips |" if mapped else "")
        + " within budget |"
        + (" float ops left |" if integer else ""),
        "|---|---|---|---|---|---|" + ("---|---|---|" if mapped else "") + "---|" + ("---|" if integer else ""),
    ]
    for c in cands:
        left = ""
        if integer:
            ops = c.get("float_ops_left")
            left = (
                " - |"
                if ops is None
                else " none (full integer) |"
                if not ops
                else f" {', '.join(f'{k} x{v}' for k, v in ops.items())} |"
            )
        if "error" in c:
            rows.append(
                f"| {c['name']} | {c['size_bytes'] / 1e3:.0f} | - | - | - | - |"
                + (" - | - | - |" if mapped else "")
                + f" no: the runtime refused it ({c['error']}) |"
                + left
            )
            continue
        rows.append(
            f"| {c['name']} | {c['size_bytes'] / 1e3:.0f} | {c['p50_ms']:.2f} | {c['p90_ms']:.2f} | "
            f"{c['cosine_mean']:.4f} | {c['cosine_min']:.4f} |"
            + (_retrieval_cells(c) if mapped else "")
            + f" {'yes' if _within(c, budget, max_map_drop) else 'no'} |"
            + left
        )
    return rows


def _verify_section(base: dict, budget: float) -> str:
    return f"[verify]\nimages = {int(base['verify']['images'])}\nmin_cosine = {budget}\n"


def _tflite_recipe_text(report: dict, chosen: dict, base: dict, budget: float) -> str:
    """A TFLite recipe that `mobilereid export --recipe` applies to make ``chosen``."""
    head = (
        f"# Chosen by mobilereid quant-sensitivity for {report['checkpoint']}: {chosen['name']}\n"
        f"# cosine {chosen['cosine_mean']:.4f}, p50 {chosen['p50_ms']:.2f} ms on {report['threads']} threads\n"
        f'target = "tflite"\nfamily = "{report["family"]}"\n'
    )
    calib = int(base.get("int8", {}).get("calibration_images", 64))
    if report.get("converter") == "litert-torch":
        return (
            head
            + (
                f'converter = "litert-torch"\nvariants = ["{chosen["variant"]}"]\n\n'
                f"[int8]\ncalibration_images = {calib}\n"
            )
            + (f"int16_ops = {json.dumps(chosen['int16_ops'])}\n" if chosen.get("int16_ops") else "")
            + (
                f'activation_ranges = "{chosen["activation_ranges"]}"\n'
                if chosen.get("activation_ranges", "-") != "-"
                else ""
            )
            + (
                f"int16_headroom = {float(base.get('int8', {}).get('int16_headroom', 1.0))}\n"
                if chosen["variant"] == "int16x8"
                else ""
            )
            + "\n"
            + _verify_section(base, budget)
        )
    nodes = ", ".join(json.dumps(n) for n in chosen["float_nodes"])
    return (
        head + f'variants = ["{chosen["variant"]}"]\n\n[int8]\n'
        f"per_channel = {str(bool(base.get('int8', {}).get('per_channel', True))).lower()}\n"
        f"calibration_images = {calib}\n"
        f'io_dtype = "{base.get("int8", {}).get("io_dtype", "int8")}"\nfloat_nodes = [{nodes}]\n'
        f'activation_ranges = "{chosen["activation_ranges"]}"\n\n' + _verify_section(base, budget)
    )


def _write_files(report: dict, out_dir: Path, base_recipes: dict) -> None:
    (out_dir / "sensitivity.json").write_text(json.dumps(report, indent=2))
    budget = report["drift_budget"]
    lines = [f"# INT8 sensitivity of {report['checkpoint']} ({report['threads']} threads)", ""]
    if report["layers"]:
        lines += [
            "## Worst layers, TFLite (RMSE of the quantization error / quantization scale)",
            "",
            "| # | op | tensor | RMSE/scale | max abs error |",
            "|---|---|---|---|---|",
        ]
    for i, l in enumerate(report["layers"][:15]):
        lines.append(
            f"| {i + 1} | {l['op']} | `{l['tensor']}` | {l['rmse_over_scale']:.2f} | {l['max_abs_error']:.4g} |"
        )
    worst = report["layers"][0]["rmse_over_scale"] if report["layers"] else None
    if worst is not None and worst < 2 * ROUNDING_FLOOR:
        lines += [
            "",
            "Every layer's error is within 2x the rounding floor "
            f"(1/sqrt(12) = {ROUNDING_FLOOR:.3f} of a quantization step; "
            f"worst {worst:.2f}): no layer is badly quantized on its own, so keeping a few layers in float cannot "
            "help much; a drift that remains comes from the network amplifying rounding noise layer after layer.",
        ]
    noise = report["noise_cosine_1_grey_level"]
    lines += [
        "",
        f"Float model's own sensitivity: its embeddings move to mean cosine {noise:.4f} "
        "when one grey level of Gaussian "
        "noise is added to the input (no quantization at all).",
    ]
    if noise < budget:
        lines += [
            "That is already below the drift budget: static INT8 adds noise of about that size to every activation, "
            "so no static INT8 recipe can be expected to meet the budget for this model; "
            "a model trained to agree with its INT8 version "
            "is what would: for SCL-net, `mobilereid quant-finetune` (quantization-consistency QAT) "
            "measured 0.907 -> 0.993 in `make run`."
        ]
    mdrop = report.get("max_map_drop")
    rule = (
        f"mAP at most {mdrop} points below the float model's on the search half"
        if mdrop is not None
        else (f"mean cosine >= {budget}")
    )
    lines += ["", f"## TFLite candidates, LiteRT (budget: {rule})", ""] + _candidate_rows(
        report["candidates"], budget, mdrop
    )
    chosen, integer = report["chosen"], report.get("chosen_full_integer")
    lines += [
        "",
        f"**Chosen:** {chosen['name']} (fastest candidate within the drift budget)"
        if chosen
        else "**No candidate meets the drift budget.**",
    ]
    lines += [
        "",
        f"**Chosen full-integer model** (no float op: for NPUs and integer-only accelerators; its speed on this "
        f"x86 CPU says little about theirs): {integer['name']}"
        if integer
        else "**No full-integer candidate meets the drift budget.**",
    ]
    et = report.get("executorch")
    if et:
        lines += ["", "## ExecuTorch candidates, XNNPACK", ""] + _candidate_rows(et["candidates"], budget, mdrop)
        lines += [
            "",
            f"**Chosen:** {et['chosen']['name']} (fastest candidate within the drift budget)"
            if et["chosen"]
            else "**No candidate meets the drift budget.**",
        ]
    if mdrop is not None:
        lines += _side_by_side(report)
    lines += ["", f"Not covered: {report['not_covered']}."]
    (out_dir / "sensitivity.md").write_text("\n".join(lines) + "\n")
    for name, c in (("recipe_tflite.toml", chosen), ("recipe_tflite_integer.toml", integer)):
        if c:
            (out_dir / name).write_text(
                _tflite_recipe_text(report, c, base_recipes["tflite"], _recipe_min_cosine(report, c))
            )
    if et and et["chosen"]:
        base, c = base_recipes["executorch"], et["chosen"]
        (out_dir / "recipe_executorch.toml").write_text(
            f"# Chosen by mobilereid quant-sensitivity for {report['checkpoint']}: {c['name']}\n"
            f"# cosine {c['cosine_mean']:.4f}, p50 {c['p50_ms']:.2f} ms on {report['threads']} threads\n"
            f'target = "executorch"\nfamily = "{report["family"]}"\nvariants = ["{c["variant"]}"]\n\n[int8]\n'
            f"per_channel = {str(bool(base.get('int8', {}).get('per_channel', True))).lower()}\n"
            f"calibration_images = {int(base.get('int8', {}).get('calibration_images', 64))}\n"
            f'activation_ranges = "{c["activation_ranges"]}"\n'
            + "".join(f"{k} = {json.dumps(c[k])}\n" for k in ("ops", "dynamic_modules") if k in c)
            + "\n"
            + _verify_section(base, _recipe_min_cosine(report, c))
        )
    _plot(report, out_dir / "sensitivity.png")


def _recipe_min_cosine(report: dict, chosen: dict) -> float:
    """The export verification floor written into a chosen recipe: the cosine budget, or under a mAP budget the
    chosen candidate's own measured cosine less 0.005 (so that export verifies what was chosen)."""
    budget = report["drift_budget"]
    if report.get("max_map_drop") is None:
        return budget
    return min(budget, float(np.floor((chosen["cosine_mean"] - 0.005) * 1000) / 1000))


def _side_by_side(report: dict) -> list[str]:
    """The mAP rule's picks next to the cosine rule's, from the same measurements."""
    lines = [
        "",
        f"## Choice by retrieval (mAP drop <= {report['max_map_drop']} points) vs by cosine (>= "
        f"{report['drift_budget']})",
        "",
        f"{report['candidates_tried']} candidates measured. mAP drop: the float model's mAP minus the candidate's, in "
        "points (negative: the candidate scores higher). Search half: even person ids (the choice); held-out half: "
        "odd person ids (does it hold on people it was not chosen on).",
        "",
        "| runtime | rule | candidate | p50 ms | cosine | mAP drop, search | mAP drop, held out | rank-1 flips |",
        "|---|---|---|---|---|---|---|---|",
    ]
    et = report.get("executorch") or {}
    picks = (
        ("LiteRT", report["chosen"], report["by_cosine"]["tflite"]),
        ("LiteRT full integer", report.get("chosen_full_integer"), report["by_cosine"]["tflite_full_integer"]),
        ("ExecuTorch", et.get("chosen"), report["by_cosine"].get("executorch")),
    )
    for runtime, by_map, by_cos in picks:
        for rule, c in (("mAP", by_map), ("cosine", by_cos)):
            if c is None:
                lines.append(f"| {runtime} | {rule} | none within budget | - | - | - | - | - |")
                continue
            lines.append(
                f"| {runtime} | {rule} | {c['name']} | {c['p50_ms']:.2f} | {c['cosine_mean']:.4f} |"
                + _retrieval_cells(c)
            )
    return lines


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report["layers"]:  # the per-layer ranking exists for the onnx2tf route only
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
        worst = report["layers"][:15][::-1]
        a1.barh(
            [f"{l['op']} {l['tensor'][-28:]}" for l in worst], [l["rmse_over_scale"] for l in worst], color="#c62828"
        )
        a1.axvline(ROUNDING_FLOOR, color="#555", ls=":", lw=1)
        a1.text(ROUNDING_FLOOR, -0.9, " rounding floor 1/sqrt(12)", fontsize=7, color="#555")
        a1.set_xlabel("RMSE / quantization scale")
        a1.set_title("worst layers")
        a1.tick_params(axis="y", labelsize=7)
    else:
        fig, a2 = plt.subplots(1, 1, figsize=(8, 5))
    for runtime, marker, cands in (
        ("LiteRT", "o", report["candidates"]),
        ("ExecuTorch", "s", (report.get("executorch") or {}).get("candidates", [])),
    ):
        for c in [c for c in cands if "error" not in c]:
            a2.scatter(c["p50_ms"], c["cosine_mean"], s=50, marker=marker)
            a2.annotate(
                f"{runtime}: {c['name']}",
                (c["p50_ms"], c["cosine_mean"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
    a2.axhline(report["drift_budget"], color="#2e7d32", ls="--", lw=1)
    a2.set_xlabel("p50 latency (ms), o LiteRT, s ExecuTorch")
    a2.set_ylabel("mean cosine to float")
    a2.set_title("candidates")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
