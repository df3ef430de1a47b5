"""TFLite straight from PyTorch: litert-torch conversion + ai-edge-quantizer recipes (recipe ``converter =
"litert-torch"``), the default TFLite route for ViTs.

Why it is the ViT default (measured side by side by ``scripts/litert_torch_route.py``:
docs/results/2026-11-24-tflite-routes.md): faster at the same drift, and the whole model is one XNNPACK partition
(GELU stays a builtin op, exact GELU included, so no Flex), where onnx2tf leaves a GATHER outside. For SCL-net the
onnx2tf route stays the default: its dynamic-range model is fully delegated (litert-torch's leaves the depthwise convs
outside) and it makes the int8-IO models the Edge TPU and TFLite Micro need.

Variants: ``fp32``; ``dynamic`` (ai-edge-quantizer ``dynamic_wi8_afp32``: int8 per-channel weights, activations
quantized at run time); ``int8`` (static int8 weights and activations, calibrated on the recipe's images through the
project's preprocessing; it also quantizes softmax, GELU and BATCH_MATMUL, and the model's input and output become
int8; ``io_dtype`` is not applied on this route); ``int16x8`` (int16 activations, int8 weights: LiteRT runs it on
reference kernels, no XNNPACK).

**Mixed int8/int16 per op type** (recipe key ``int8.int16_ops``, e.g. ``["ADD"]``): the ``int8`` variant with int16
activations for the ops of the named TFLite types, the rest int8; ai-edge-quantizer puts a requantizing op between
the two precisions. Issue 15's "int16 where int8 does not hold", chosen per op type because litert-torch's tensor
names do not carry the module paths a finer rule would need. On the BatchNorm ViT (vit.py, ``norm = "batch"``) int16
for the ADDs alone moves the full-int8 cosine 0.972 → 0.985 at 6 ms instead of int16x8's 74 ms on this CPU
(`mobilereid quant-sensitivity` measures the choice per model). An op type the graph lacks, or one ai-edge-quantizer
has no int16 configuration for (e.g. LOGICAL_OR), is a one-line error, not a silent fallback.

**int16 headroom** (recipe key ``int8.int16_headroom``, the ViT recipe: 2): the int16x8 variant's calibrated
ranges widened by this factor. With the extremes of 64 calibration images, held-out images that run beyond them are
clipped — the mean cosine hides a few such images (compressed vit_tiny, 200 held-out images: mean 0.9918, worst
0.694); int16 has steps to spare, so twice the range costs one bit and keeps them: mean 0.9969, worst 0.902.

Static variants are made from the integer-friendly graph of `..integer_friendly` (function-preserving rewrites; the
int16 graph computes its reciprocal square roots differently from the int8 one, so each static precision has its
own conversion and calibration; fp32 and dynamic come from the model as it is). Within one graph a calibration
serves every candidate: the recorded ranges are float min/max per tensor, whatever bit width a recipe then gives
each tensor (`mobilereid quant-sensitivity` relies on that). ai-edge-quantizer leaves an op it cannot quantize in
the requested precision in float (SQUARED_DIFFERENCE in int16 before the rewrites); `ops.float_compute_ops` finds
such ops in the result, and the export records them (``float_ops_left`` in the sidecar) so that "full integer" is
checked, not assumed.

The input is channel-last (``to_channel_last_io``), like the onnx2tf artifacts, so runners and the Android app treat
both routes alike.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ExportError
from ..common import ExportJob, unshared_graph
from ..targets import TARGETS

VARIANTS = TARGETS["tflite"].variants
RANGE_RULES = ("default", "minmax", "mean_minmax", "p90_minmax")
STATIC_BITS = {"int8": 8, "int16x8": 16}
CONVERTER_NAME = "litert-torch 0.10.0 + ai-edge-quantizer 0.10.0"


def check_recipe(variants: list[str], qcfg: dict) -> None:
    for v in variants:
        if v not in VARIANTS:
            raise ExportError(
                f'the litert-torch route makes {", ".join(VARIANTS)}, not {v!r} (use converter = "onnx2tf")'
            )
    if "int8" in variants and (qcfg.get("float_ops") or qcfg.get("float_nodes")):
        raise ExportError(
            'int8.float_ops / float_nodes are applied by the onnx2tf route only (use converter = "onnx2tf")'
        )
    rule = qcfg.get("activation_ranges", "default")
    if rule not in RANGE_RULES:
        raise ExportError(
            f"int8.activation_ranges {rule!r} is not a rule of the litert-torch route "
            f"(choose from {', '.join(RANGE_RULES)})"
        )


def build_litert_torch_variants(job: ExportJob, variants: list[str], qcfg: dict) -> dict[str, bytes]:
    """fp32 and dynamic from the model as it is; each static variant from its integer-friendly graph (one per static
    precision, `integer_graph`), its rewrites recorded in ``job.graph_rewrites[variant]``."""
    check_recipe(variants, qcfg)
    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))[: int(qcfg.get("calibration_images", 64))]
    out = {}
    plain = [v for v in variants if v not in STATIC_BITS]
    if plain:
        out.update(convert_with_litert_torch(job.model, calib_nhwc, plain, job.threads, job.stem))
    headroom = float(qcfg.get("int16_headroom", 1.0))
    for v in (v for v in variants if v in STATIC_BITS):
        graph, job.graph_rewrites[v] = integer_graph(job, v, headroom)
        out.update(
            convert_with_litert_torch(
                graph,
                calib_nhwc,
                [v],
                job.threads,
                job.stem,
                int16_ops=qcfg.get("int16_ops", []),
                ranges=qcfg.get("activation_ranges", "default"),
                int16_headroom=headroom,
            )
        )
    return {v: out[v] for v in variants}


def integer_graph(job: ExportJob, variant: str, int16_headroom: float = 1.0) -> tuple[torch.nn.Module, list[str]]:
    """The job's model with the function-preserving rewrites of `integer_friendly` for ``variant`` (int16x8: also
    SQRT + DIV for RSQRT, its clamp sized for ranges widened by ``int16_headroom``), captured by torch.export with
    one copy of each weight per op (see unshare_weights), and the names of the rewrites."""
    from ..integer_friendly import integer_friendly

    model, rewrites = integer_friendly(
        job.model, torch.from_numpy(job.calib.copy()), divide=variant == "int16x8", headroom=int16_headroom
    )
    return unshared_graph(job, model), rewrites


def convert_with_litert_torch(
    model: torch.nn.Module,
    calib_nhwc: np.ndarray,
    variants: list[str],
    threads: int,
    name: str = "model",
    int16_ops: list[str] = (),
    ranges: str = "default",
    int16_headroom: float = 1.0,
) -> dict[str, bytes]:
    """``{variant: .tflite bytes}`` for fp32 / dynamic / int8 / int16x8 of an eval-mode model taking NCHW images;
    ``int16_ops``: TFLite op types the int8 variant keeps in int16; ``ranges``: the activation range rule;
    ``int16_headroom``: the int16x8 variant's ranges widened by this factor (module docstring)."""
    fp32 = convert_fp32(model, calib_nhwc[:1], name)
    out = {}
    if "fp32" in variants:
        out["fp32"] = fp32
    if "dynamic" in variants:
        from ai_edge_quantizer import quantizer, recipe

        out["dynamic"] = bytes(quantizer.Quantizer(fp32, recipe.dynamic_wi8_afp32()).quantize().quantized_model)
    static = [v for v in variants if v in STATIC_BITS]
    if static:
        mixed = check_int16_ops(fp32, int16_ops, name) if "int8" in static else []
        recorded = calibrate(fp32, calib_nhwc, threads, name, ranges)
        for v in static:
            ranges_v = widened(recorded, int16_headroom) if v == "int16x8" else recorded
            out[v] = quantize_static(fp32, ranges_v, STATIC_BITS[v], mixed if v == "int8" else [], name)
    return {v: out[v] for v in variants}


def convert_fp32(model: torch.nn.Module, example_nhwc: np.ndarray, name: str) -> bytes:
    try:
        import litert_torch
    except ImportError as exc:
        raise ExportError(
            f"the litert-torch route needs litert-torch and ai-edge-quantizer ({exc}); run `make setup`"
        ) from None
    try:
        channel_last = litert_torch.to_channel_last_io(model, args=[0]).eval()
        return bytes(litert_torch.convert(channel_last, (torch.from_numpy(example_nhwc[:1].copy()),)).model_content())
    except Exception as exc:
        raise ExportError(f"litert-torch could not convert {name}: {' '.join(str(exc).split())[:300]}") from None


def static_recipe(activation_bits: int, other_ops: list[str] = ()):
    """ai-edge-quantizer recipe: int8 weights everywhere, ``activation_bits`` activations for every op it supports,
    and the other width (16 when the base is 8, 8 when it is 16) for the ops of the types in ``other_ops`` (later
    rules take precedence in ai-edge-quantizer)."""
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=activation_bits,
        weight_num_bits=8,
    )
    for op in other_ops:
        manager.add_static_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName(op),
            activation_num_bits=16 if activation_bits == 8 else 8,
            weight_num_bits=8,
        )
    return manager.get_quantization_recipe()


def check_int16_ops(fp32: bytes, int16_ops: list[str], name: str) -> list[str]:
    """``int16_ops`` as TFLite op type names (upper case), each one present in the converted graph and one
    ai-edge-quantizer can give int16 activations; otherwise a one-line error."""
    from .ops import op_counts

    present = op_counts(fp32)
    ops = []
    for raw in int16_ops:
        op = str(raw).upper()
        if op not in present:
            raise ExportError(
                f"int8.int16_ops names {raw!r}, but the LiteRT graph of {name} has no {op} op "
                f"(its op types: {', '.join(sorted(present))})"
            )
        if not has_int16_config(op):
            raise ExportError(
                f"int8.int16_ops names {op}, which has no int16 kernel configuration in "
                f"ai-edge-quantizer (it would leave the op unquantized)"
            )
        ops.append(op)
    return ops


def has_int16_config(op: str) -> bool:
    """Whether ai-edge-quantizer can give TFLite op type ``op`` int16 activations and int8 weights (its own policy
    check; an op it cannot take is left unquantized, silently)."""
    from ai_edge_quantizer import algorithm_manager, qtyping

    config = qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, symmetric=True),
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=8, symmetric=True, granularity=qtyping.QuantGranularity.CHANNELWISE
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )
    try:
        algorithm_manager.check_op_quantization_config(
            algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT, qtyping.TFLOperationName(op), config
        )
    except ValueError:  # an op type ai-edge-quantizer does not know, or one without an int16 configuration
        return False
    return True


def calibrate(fp32: bytes, calib_nhwc: np.ndarray, threads: int, name: str, rule: str = "default") -> dict:
    """Per-tensor float ranges over the calibration images. ``"default"``: ai-edge-quantizer's own calibration, an
    exponential moving average (factor 0.95) of each image's minimum and maximum; the other rules record every
    image's extremes and combine them as ``activation_ranges.combine_extremes`` says (``"minmax"``: the extremes over
    all images, nothing clipped)."""
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager

    try:
        signature, arg = _signature_input(fp32)
        data = {signature: [{arg: x[None]} for x in calib_nhwc]}
        if rule == "default":
            return quantizer.Quantizer(fp32, static_recipe(8)).calibrate(data, num_threads=threads)
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(static_recipe(8))
        recorder = calibrator.Calibrator(fp32, num_threads=threads, qsv_update_func=_record_extremes)
        recorder.calibrate(data, manager)
        return {t: _combined(qsv, rule) for t, qsv in recorder.get_model_qsvs().items()}
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ai-edge-quantizer could not calibrate {name}: {' '.join(str(exc).split())[:300]}") from None


def widened(recorded: dict, factor: float) -> dict:
    """Calibrated ranges scaled by ``factor`` (>= 1) about zero: headroom for images beyond the calibration images'
    extremes, paid for with log2(factor) of int16's 16 bits (module docstring)."""
    if factor == 1.0:
        return recorded
    return {
        t: (
            {**q, "min": np.asarray(q["min"]) * factor, "max": np.asarray(q["max"]) * factor} if q and "min" in q else q
        )
        for t, q in recorded.items()
    }


def _record_extremes(qsv: dict, new: dict) -> dict:
    """ai-edge-quantizer update function (called once per tensor and image after the first, whose values the
    calibrator stores as they are): keep every image's min and max."""
    lows, highs = (qsv.get("lows", [qsv["min"]]), qsv.get("highs", [qsv["max"]])) if qsv else ([], [])
    return {"min": new["min"], "max": new["max"], "lows": lows + [new["min"]], "highs": highs + [new["max"]]}


def _combined(qsv: dict, rule: str) -> dict:
    from ..activation_ranges import combine_extremes

    if not qsv or "min" not in qsv:
        return qsv
    if "lows" not in qsv:  # seen in one image only
        qsv = {"lows": [qsv["min"]], "highs": [qsv["max"]]}
    lo, hi = combine_extremes(
        rule, np.stack([np.asarray(v) for v in qsv["lows"]]), np.stack([np.asarray(v) for v in qsv["highs"]])
    )
    return {"min": np.asarray(lo, np.float32), "max": np.asarray(hi, np.float32)}


def quantize_static(fp32: bytes, ranges: dict, activation_bits: int, other_ops: list[str], name: str) -> bytes:
    from ai_edge_quantizer import quantizer

    label = {8: "int8", 16: "int16x8"}[activation_bits] + (
        f" (other width for {', '.join(other_ops)})" if other_ops else ""
    )
    try:
        return bytes(
            quantizer.Quantizer(fp32, static_recipe(activation_bits, other_ops)).quantize(ranges).quantized_model
        )
    except Exception as exc:
        raise ExportError(
            f"ai-edge-quantizer could not make the {label} model of {name}: {' '.join(str(exc).split())[:300]}"
        ) from None


def _signature_input(model_bytes: bytes) -> tuple[str, str]:
    from ...runtimes import litert_interpreter_class

    signatures = litert_interpreter_class()(model_content=model_bytes).get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]
