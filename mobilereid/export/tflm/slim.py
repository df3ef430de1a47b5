"""Slim a full-integer .tflite for TFLite Micro: drop what the micro interpreter never reads (flash is the budget).

What is dropped, and why each is safe for TFLM's int8 kernels (the exporter then runs the slim and the full model
in the TFLite Micro interpreter and requires bit-identical outputs, so a wrong assumption fails the export):

* **Per-channel zero-point arrays that are all zero** (the converter writes one int64 per output channel for every
  per-channel weight and bias tensor; int8 weights are symmetric, so they are all 0) are cut to one entry: TFLM's
  allocator reads entry 0 for every channel when the zero-point array is shorter than the scale array (TFLM's own
  space-saving rule, the one its ``remove_extraneous_quantization_data`` transform relies on). LiteRT refuses such
  a file (it requires as many zero points as scales), which is why only the TFLM artifact is slimmed.
* **min/max** of quantization parameters (converter bookkeeping; kernels read scale and zero point only).
* **Quantization parameters of int32 bias tensors** of int8 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: TFLM's
  int8 kernels derive the per-channel requantization from input, filter and output scales; the bias is added as
  raw int32 and its scale is only checked for the legacy uint8 path.
* **Strings**: tensor and subgraph names, the signature table (TensorFlow's ``flatbuffer_utils.strip_strings``).
  The ``mobilereid`` description in the metadata table stays (the evaluator and boards read it).
* **Buffers no tensor or metadata entry refers to** (the index table is renumbered).
"""

from __future__ import annotations

_BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def slim_for_micro(model_bytes: bytes) -> tuple[bytes, dict]:
    """Return the slimmed flatbuffer and what was dropped (bytes saved per kind)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from ..tflite.ops import op_names

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    ops = op_names(model_bytes)
    counts = {"zero_point_entries": 0, "min_max_entries": 0, "bias_quantization_entries": 0}
    biases = set()
    for subgraph_index, subgraph in enumerate(model.subgraphs):
        for k, op in enumerate(subgraph.operators or []):
            if (
                subgraph_index == 0
                and ops[k] in _BIAS_OPS
                and op.inputs is not None
                and len(op.inputs) > 2
                and op.inputs[2] >= 0
            ):
                bias = subgraph.tensors[op.inputs[2]]
                if bias.type == schema.TensorType.INT32:
                    biases.add((subgraph_index, int(op.inputs[2])))
        for i, tensor in enumerate(subgraph.tensors):
            q = tensor.quantization
            if q is None:
                continue
            if (subgraph_index, i) in biases and q.scale is not None and len(q.scale) > 0:
                counts["bias_quantization_entries"] += len(q.scale) + (0 if q.zeroPoint is None else len(q.zeroPoint))
                tensor.quantization = None
                continue
            for field in ("min", "max"):
                values = getattr(q, field)
                if values is not None and len(values):
                    counts["min_max_entries"] += len(values)
                    setattr(q, field, None)
            zp = q.zeroPoint
            if zp is not None and len(zp) > 1 and not any(int(z) for z in zp):
                counts["zero_point_entries"] += len(zp) - 1
                q.zeroPoint = [0]
    flatbuffer_utils.strip_strings(model)
    dropped_buffers = _drop_unused_buffers(model)
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return data, {
        **counts,
        "unused_buffers": dropped_buffers,
        "bytes_before": len(model_bytes),
        "bytes_after": len(data),
    }


def _drop_unused_buffers(model) -> int:
    """Remove buffers referenced by no tensor and no metadata entry (buffer 0, the empty sentinel, stays)."""
    used = {0}
    for subgraph in model.subgraphs:
        used.update(int(t.buffer) for t in subgraph.tensors)
    used.update(int(m.buffer) for m in (model.metadata or []))
    used.update(int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else []))
    keep = [i for i in range(len(model.buffers)) if i in used]
    if len(keep) == len(model.buffers):
        return 0
    renumber = {old: new for new, old in enumerate(keep)}
    dropped = len(model.buffers) - len(keep)
    model.buffers = [model.buffers[i] for i in keep]
    for subgraph in model.subgraphs:
        for t in subgraph.tensors:
            t.buffer = renumber[int(t.buffer)]
    for m in model.metadata or []:
        m.buffer = renumber[int(m.buffer)]
    if model.metadataBuffer is not None:  # the schema's older list of metadata buffer indices
        model.metadataBuffer = [renumber[int(b)] for b in model.metadataBuffer]
    return dropped
