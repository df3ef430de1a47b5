"""How the int8 range of each activation tensor is chosen from the calibration images (TFLite route).

``activation_ranges = "default"`` keeps each toolchain's own estimate. TensorFlow's converter records, for every
activation tensor, the minimum and maximum over *all* calibration images: one unusual image sets the scale for
every image, and every other image is quantized with coarser steps than it needs. ExecuTorch's XNNPACKQuantizer
fits a HistogramObserver to every calibration value, whose range is an approximate L2 (MSE) minimisation of the
quantization error over the histogram (its ``_non_linear_param_search``, after Caffe2's norm minimisation): the
"MSE ranges" of the PTQ literature are therefore what ``default`` measures on the ExecuTorch route (SCL-net figures
below; the ViT's static .pte uses it). ``"mean_minmax"`` uses instead the mean over the calibration images
of each image's own minimum and maximum — the range estimate of moving-average calibration (the exponential
moving average of batch min/max in TensorFlow's quantization-aware training and in ai-edge-quantizer's calibrator;
Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient inference", section 3). Values outside
the range are clipped; the trade is fewer clipped outliers against finer steps for the typical image.
``"p90_minmax"`` takes instead the 90th percentile of the per-image maxima (10th of the minima): per-image extremes
have a heavy tail, and a mean pulled in by most images still clips the few images whose activations run far
higher, which is where the worst per-image drift came from (a percentile over per-image statistics, in the spirit
of percentile calibration, Wu et al. 2020, "Integer quantization for deep learning inference", section 4.1;
here taken over images rather than over values, so no single image sets the scale but no common image is clipped).

Measured (docs/results/2026-11-24-export-benchmark.md, docs/experiments/sclnet-int8-sensitivity.md): on trained
SCL-nets the per-image rules lift static INT8 from cosine ~0.5-0.6 to ~0.9, the 90th percentile best, so SCL-net
recipes use ``p90_minmax``; on a LayerNorm ViT's full int8 they do not help.

On the litert-torch route (ViTs, `tflite.litert_torch_route.calibrate`) ``"default"`` is ai-edge-quantizer's own
calibration, an exponential moving average (factor 0.95) of each image's extremes, which clips every image that
runs beyond the average; the other rules record each image's extremes there and combine them the same way, and
``"minmax"`` (the extremes of all images, what TensorFlow's converter does by default) is added. On int16x8 ViTs
the extremes of all images win by far (docs/results/2026-12-01-vit-int16x8.md); with int8 the finer steps of a
clipped range can win, so `mobilereid quant-sensitivity` measures both rules.

Mechanics (onnx2tf route): the converter calibrates only (``_experimental_calibrate_only``: a float model whose tensors
carry the recorded min/max), the per-image extremes of those same tensors are read by running that model in LiteRT with
every tensor preserved (builtin kernels, no delegate), the recorded ranges are replaced, and TensorFlow's MLIR quantizer
(the step the converter itself runs next) quantizes the model.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExportError

RULES = ("default", "mean_minmax", "p90_minmax")
PERCENTILE = 90.0  # of "p90_minmax"


def combine_extremes(rule: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (min, max) per column of the per-image extremes ``lo``/``hi`` (n_images, ...) according to ``rule``."""
    if rule == "mean_minmax":
        return lo.mean(axis=0), hi.mean(axis=0)
    if rule == "p90_minmax":
        return np.percentile(lo, 100 - PERCENTILE, axis=0), np.percentile(hi, PERCENTILE, axis=0)
    if rule == "minmax":
        return lo.min(axis=0), hi.max(axis=0)
    raise ExportError(f"activation range rule {rule!r} has no per-image combination")


def ranged_tensors(model) -> list[int]:
    """Indices of subgraph-0 tensors that carry a recorded (per-tensor) calibration range."""
    out = []
    for i, t in enumerate(model.subgraphs[0].tensors):
        q = t.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1:
            out.append(i)
    return out


def per_image_extremes(calibrated: bytes, tensors: list[int], images_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_images, n_tensors) arrays of each image's minimum and maximum of each tensor, from LiteRT."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=calibrated,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    lo = np.empty((len(images_nhwc), len(tensors)), np.float64)
    hi = np.empty_like(lo)
    for n, x in enumerate(images_nhwc):
        it.set_tensor(inp, x[None].astype(np.float32))
        it.invoke()
        for k, t in enumerate(tensors):
            a = it.get_tensor(t)
            lo[n, k], hi[n, k] = float(a.min()), float(a.max())
    return lo, hi


def apply_range_rule(calibrated: bytes, images_nhwc: np.ndarray, rule: str) -> bytes:
    """The calibrated model with its recorded activation ranges replaced according to ``rule``, then widened where
    XNNPACK could not requantize them (`widen_for_requantization`)."""
    if rule not in RULES:
        raise ExportError(f"unknown int8.activation_ranges {rule!r} (choose from {', '.join(RULES)})")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    if rule != "default":
        tensors = ranged_tensors(model)
        if not tensors:
            raise ExportError("the converter recorded no activation ranges to replace (nothing to quantize?)")
        lo, hi = combine_extremes(rule, *per_image_extremes(calibrated, tensors, images_nhwc))
        for k, t in enumerate(tensors):
            q = model.subgraphs[0].tensors[t].quantization
            q.min, q.max = [float(lo[k])], [float(hi[k])]
    widened = widen_for_requantization(model)
    if rule == "default" and not widened:
        return calibrated  # the converter's own ranges, untouched
    return flatbuffer_utils.convert_object_to_bytearray(model)


MAX_REQUANT_RATIO = 128.0  # XNNPACK's qs8 convolutions need input scale x weight scale / output scale < 256
_WEIGHTED = {3: 0, 4: 3, 9: 0}  # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: the weights' output-channel axis


def widen_for_requantization(model) -> int:
    """Widen the output range of every convolution / fully connected layer whose int8 requantization factor
    (input scale x largest per-channel weight scale / output scale) would reach XNNPACK's limit of 256, so that it
    is at most 128; returns how many ranges were widened.

    A layer whose output hardly varies over the calibration images gets a tiny range, hence a tiny output scale:
    OSNet's channel gate squeezes 16 channels to one (reduction 16) followed by ReLU, and in a model trained little
    that unit is dead (output ~0 on every image). XNNPACK then refuses the whole INT8 model ("failed to create
    XNNPACK runtime") and TFLite's reference kernels overflow their fixed-point multiplier. The widening changes
    only such near-constant tensors: their values still land on a step of the wider grid (zero stays exact)."""
    sub = model.subgraphs[0]
    widened = 0
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        axis = _WEIGHTED.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if axis is None or len(op.inputs) < 2:
            continue
        x, w, y = sub.tensors[op.inputs[0]], sub.tensors[op.inputs[1]], sub.tensors[op.outputs[0]]
        qx, qy = x.quantization, y.quantization
        data = model.buffers[w.buffer].data if w.buffer < len(model.buffers) else None
        if qx is None or qy is None or qx.min is None or qy.min is None or data is None or len(data) == 0:
            continue
        weights = np.frombuffer(bytes(data), np.float32).reshape(tuple(w.shape))
        w_scale = float(np.abs(np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)).max(axis=1).max()) / 127
        x_scale = (max(float(qx.max[0]), 0.0) - min(float(qx.min[0]), 0.0)) / 255
        y_lo, y_hi = min(float(qy.min[0]), 0.0), max(float(qy.max[0]), 0.0)
        need = x_scale * w_scale / MAX_REQUANT_RATIO * 255  # the smallest output range XNNPACK accepts, with margin
        if w_scale > 0 and x_scale > 0 and y_hi - y_lo < need:
            if y_lo < 0:  # keep the range's sign structure: a ReLU output (min 0) stays non-negative
                grow = need - (y_hi - y_lo)
                qy.min, qy.max = [y_lo - grow / 2], [y_hi + grow / 2]
            else:
                qy.min, qy.max = [0.0], [need]
            widened += 1
    return widened


def executorch_activation_observer(rule: str):
    """PT2E activation observer class for ``rule`` in the ExecuTorch route (None: keep XNNPACKQuantizer's own,
    a HistogramObserver fitted to every calibration value). The rules combine each calibration batch's (one
    image's) min and max exactly as the TFLite route combines its per-image extremes (`combine_extremes`)."""
    if rule not in RULES:
        raise ExportError(f"unknown int8.activation_ranges {rule!r} (choose from {', '.join(RULES)})")
    if rule == "default":
        return None
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class PerImageExtremesObserver(MinMaxObserver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.extremes: list[tuple[float, float]] = []

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            lo, hi = torch.aminmax(x_orig.detach().to(self.min_val.dtype))
            self.extremes.append((float(lo), float(hi)))
            pairs = np.array(self.extremes)
            lo_all, hi_all = combine_extremes(rule, pairs[:, :1], pairs[:, 1:])
            self.min_val.copy_(torch.tensor(float(lo_all[0])))
            self.max_val.copy_(torch.tensor(float(hi_all[0])))
            return x_orig

    return PerImageExtremesObserver
