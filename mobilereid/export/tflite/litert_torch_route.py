"""TFLite straight from PyTorch: litert-torch conversion + ai-edge-quantizer recipes (recipe ``converter =
"litert-torch"``), the default TFLite route for ViTs.

Why it is the ViT default (measured side by side in one LiteRT process by ``scripts/litert_torch_route.py`` on the
trained vit_tiny of ``make run``, 2 threads): fp32 1.22 ms vs 1.42 ms through onnx2tf, dynamic int8 0.58 ms vs
0.70 ms at the same drift (cosine 0.9934 vs 0.9929); the whole model is one XNNPACK partition (GELU stays a builtin
op, exact GELU included, so no Flex), where onnx2tf leaves a GATHER outside. For SCL-net the onnx2tf route stays the
default: its dynamic-range model is fully delegated (litert-torch's leaves 36 depthwise convs outside, 1.55 ms vs
0.42 ms) and it makes the int8-IO models the Edge TPU and TFLite Micro need.

Variants: ``fp32``; ``dynamic`` (ai-edge-quantizer ``dynamic_wi8_afp32``: int8 per-channel weights, activations
quantized at run time); ``int8`` (``static_wi8_ai8``, calibrated on the recipe's images through the project's
preprocessing; it also quantizes softmax, GELU and BATCH_MATMUL, and the model's input and output become int8;
``io_dtype`` is not applied on this route); ``int16x8`` (``static_wi8_ai16``: int16 activations, int8 weights, for
accuracy studies: LiteRT has no XNNPACK kernels for it). The input is channel-last (``to_channel_last_io``), like the onnx2tf artifacts, so runners and the
Android app treat both routes alike.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ExportError
from ..common import ExportJob, unshared_graph

VARIANTS = ("fp32", "dynamic", "int8", "int16x8")
CONVERTER_NAME = "litert-torch 0.10.0 + ai-edge-quantizer 0.10.0"


def check_recipe(variants: list[str], qcfg: dict) -> None:
    for v in variants:
        if v not in VARIANTS:
            raise ExportError(f"the litert-torch route makes {', '.join(VARIANTS)}, not {v!r} (use converter = \"onnx2tf\")")
    if "int8" in variants and (qcfg.get("float_ops") or qcfg.get("float_nodes")):
        raise ExportError("int8.float_ops / float_nodes are applied by the onnx2tf route only (use converter = \"onnx2tf\")")
    if "int8" in variants and qcfg.get("activation_ranges", "default") != "default":
        raise ExportError("int8.activation_ranges applies to the onnx2tf route only (use converter = \"onnx2tf\")")


def build_litert_torch_variants(job: ExportJob, variants: list[str], qcfg: dict) -> dict[str, bytes]:
    check_recipe(variants, qcfg)
    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))
    model = job.model
    if "int8" in variants or "int16x8" in variants:  # one copy of each weight per op (see unshare_weights)
        model = unshared_graph(job)
    return convert_with_litert_torch(model, calib_nhwc[: int(qcfg.get("calibration_images", 64))], variants,
                                     job.threads, job.stem)


def convert_with_litert_torch(model: torch.nn.Module, calib_nhwc: np.ndarray, variants: list[str], threads: int,
                              name: str = "model") -> dict[str, bytes]:
    """``{variant: .tflite bytes}`` for fp32 / dynamic / int8 of an eval-mode model taking NCHW images."""
    try:
        import litert_torch
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise ExportError(f"the litert-torch route needs litert-torch and ai-edge-quantizer ({exc}); run `make setup`") from None
    try:
        channel_last = litert_torch.to_channel_last_io(model, args=[0]).eval()
        fp32 = bytes(litert_torch.convert(channel_last, (torch.from_numpy(calib_nhwc[:1].copy()),)).model_content())
    except Exception as exc:
        raise ExportError(f"litert-torch could not convert {name}: {' '.join(str(exc).split())[:300]}") from None
    out = {}
    if "fp32" in variants:
        out["fp32"] = fp32
    if "dynamic" in variants:
        out["dynamic"] = bytes(quantizer.Quantizer(fp32, recipe.dynamic_wi8_afp32()).quantize().quantized_model)
    for variant, make_recipe in (("int8", recipe.static_wi8_ai8), ("int16x8", recipe.static_wi8_ai16)):
        if variant not in variants:
            continue
        try:
            static = quantizer.Quantizer(fp32, make_recipe())
            signature, arg = _signature_input(fp32)
            ranges = static.calibrate({signature: [{arg: x[None]} for x in calib_nhwc]}, num_threads=threads)
            out[variant] = bytes(static.quantize(ranges).quantized_model)
        except Exception as exc:
            raise ExportError(f"ai-edge-quantizer could not make the {variant} model of {name}: {' '.join(str(exc).split())[:300]}") from None
    return {v: out[v] for v in variants}


def _signature_input(model_bytes: bytes) -> tuple[str, str]:
    from ...runtimes import litert_interpreter_class

    signatures = litert_interpreter_class()(model_content=model_bytes).get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]
