"""Function-preserving rewrites of the ONNX graph before onnx2tf (the TFLite, Edge TPU and TFLite Micro route).

**Zero-padded max pooling after a ReLU.** A max pool with padding (OSNet's and ResNet's stems: 3x3/2, padding 1, or
fast-reid's ceil_mode) pads with -inf. onnx2tf writes that as a PADV2 of the float minimum (its own INT8 output
uses 0, but this project quantizes with TensorFlow's converter), calibration then gives the padded tensor a scale of
~1e36, LiteRT's XNNPACK refuses the INT8 model ("failed to create XNNPACK runtime") and TFLite's own kernels give
noise: the collapse of OSNet INT8 TFLite models that the field reports. When the pool's input is a ReLU output
(never negative), zeros give the same maximum, since every window holds at least one real value. So such a pool
becomes Pad(0) + an unpadded pool, with the extra bottom/right padding that ceil_mode implies. The rewrite runs
after onnx-simplifier (which would fuse the Pad back into the pool) and only on this route: ExecuTorch's XNNPACK
takes the padded pool as it is (and refused the zero-padded form in INT8).
"""

from __future__ import annotations


def _pads_for(n: int, k: int, s: int, begin: int, end: int, ceil: bool) -> tuple[int, int]:
    """Begin/end padding of one axis that makes an unpadded floor-mode pool give torch's/ONNX's output size."""
    span = n + begin + end - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + begin:  # a last window that would start in the end padding is dropped
        out -= 1
    return begin, max(0, (out - 1) * s + k - n - begin)


def zero_pad_relu_maxpools(model) -> int:
    """Rewrite, in place, every 2-D MaxPool with padding or ceil_mode whose input is produced by a Relu; returns how
    many were rewritten. Needs static input shapes (the project exports fixed-size graphs)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    producer = {out: node for node in model.graph.node for out in node.output}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        if node.op_type != "MaxPool" or not node.input:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads, ceil = list(attrs.get("pads", [0, 0, 0, 0])), bool(attrs.get("ceil_mode", 0))
        src = producer.get(node.input[0])
        shape = shapes.get(node.input[0], [])
        if (
            len(pads) != 4
            or not (any(pads) or ceil)
            or src is None
            or src.op_type != "Relu"
            or len(shape) != 4
            or not all(shape[2:])
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or any(d != 1 for d in attrs.get("dilations", [1, 1]))
        ):
            nodes.append(node)
            continue
        (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", [1, 1])
        top, bottom = _pads_for(shape[2], kh, sh, pads[0], pads[2], ceil)
        left, right = _pads_for(shape[3], kw, sw, pads[1], pads[3], ceil)
        name = node.name or node.output[0]
        pad_value = f"{name}_zero_pads"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64), pad_value)
        )
        padded = f"{name}_zero_padded"
        nodes.append(
            helper.make_node("Pad", [node.input[0], pad_value], [padded], name=f"{name}_zero_pad", mode="constant")
        )
        kept = {k: v for k, v in attrs.items() if k not in ("pads", "ceil_mode", "auto_pad")}
        nodes.append(helper.make_node("MaxPool", [padded], list(node.output), name=name, **kept))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten
