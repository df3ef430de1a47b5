"""Where the bytes of a .tflite file go: constant tensors by type, quantization parameters, and the rest.

Why: the issue's size goal (INT8 <= 0.27x of fp32) is met by the ViTs but not by SCL-net, and the reason is
structural, so it is shown from the file rather than asserted. A per-channel quantized conv stores, besides its
int8 weights, an int32 bias and two sets of per-output-channel quantization parameters (weights and bias), each a
float32 scale plus an int64 zero point (the TFLite schema's ``QuantizationParameters``: ``scale: [float]``,
``zero_point: [long]``) -- 24 bytes per output channel. SCL-net's SC-units are built from 1x1 convs with few input
channels and depthwise 3x3 convs (9 weights per channel), so those 24 bytes are a large share of each channel's
int8 weights. The breakdown is computed from the flatbuffer with TensorFlow's own schema reader.
"""

from __future__ import annotations

from collections import Counter

_BYTES_PER_SCALE, _BYTES_PER_ZERO_POINT = 4, 8


def size_breakdown(model_bytes: bytes) -> dict:
    """Bytes of the model by role: constants per dtype, quantization parameters, everything else (graph, op
    tables, strings, metadata, alignment); plus the per-channel quantization count."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    constants: Counter = Counter()
    quant_bytes = per_channel_tensors = per_channel_entries = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                constants[type_names.get(tensor.type, str(tensor.type))] += len(data)
            q = tensor.quantization
            if q is None:
                continue
            scales = 0 if q.scale is None else len(q.scale)
            zero_points = 0 if q.zeroPoint is None else len(q.zeroPoint)
            quant_bytes += scales * _BYTES_PER_SCALE + zero_points * _BYTES_PER_ZERO_POINT
            if scales > 1:
                per_channel_tensors += 1
                per_channel_entries += scales
    total = len(model_bytes)
    accounted = sum(constants.values()) + quant_bytes
    return {
        "total_bytes": total,
        "constant_bytes": dict(sorted(constants.items())),
        "quantization_parameter_bytes": quant_bytes,
        "other_bytes": total - accounted,
        "per_channel_tensors": per_channel_tensors,
        "per_channel_entries": per_channel_entries,
    }


def breakdown_line(b: dict) -> str:
    """One human-readable line, e.g. for the benchmark table's notes."""
    kb = lambda n: f"{n / 1024:.0f} KiB"  # noqa: E731
    parts = [f"{name} constants {kb(n)}" for name, n in b["constant_bytes"].items()]
    parts.append(
        f"quantization parameters {kb(b['quantization_parameter_bytes'])} "
        f"({b['per_channel_entries']} per-channel entries in {b['per_channel_tensors']} tensors)"
    )
    parts.append(f"graph and metadata {kb(b['other_bytes'])}")
    return f"{kb(b['total_bytes'])}: " + ", ".join(parts)
