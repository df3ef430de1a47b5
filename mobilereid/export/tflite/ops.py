"""Read the operator list of a .tflite flatbuffer (TensorFlow's generated schema), for the checks that need it:
no Select-TF (Flex) ops, Edge TPU and TFLite Micro op support, input/output quantization."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def op_names(model_bytes: bytes) -> list[str]:
    """Every operator of the main subgraph in execution order, as TFLite names (CONV_2D, FlexErf, ...)."""
    return _main_subgraph(model_bytes)[0]


def _main_subgraph(model_bytes: bytes):
    """(operator names in execution order, subgraph 0 as the schema's object API) of a .tflite flatbuffer."""
    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for oc in model.operatorCodes:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.customCode.decode() if isinstance(oc.customCode, bytes) else str(oc.customCode)
            codes.append(custom)
        else:
            codes.append(builtin_names.get(code, f"BUILTIN_{code}"))
    graph = model.subgraphs[0] if model.subgraphs else None
    return [codes[op.opcodeIndex] for op in (graph.operators or [] if graph else [])], graph


def op_counts(path_or_bytes: str | Path | bytes) -> Counter:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return Counter(op_names(data))


def flex_ops(model_bytes: bytes) -> list[str]:
    return sorted({n for n in op_names(model_bytes) if n.startswith("Flex")})


def float_compute_ops(model_bytes: bytes) -> Counter:
    """Operators of the main subgraph that compute in float: any float32/float16 input or output tensor, QUANTIZE and
    DEQUANTIZE excepted (they mark the boundaries). Empty for a full-integer model; a quantizer that could not take
    an op leaves it here."""
    floats = {_schema().TensorType.FLOAT32, _schema().TensorType.FLOAT16}
    names, graph = _main_subgraph(model_bytes)
    found = Counter()
    for name, op in zip(names, graph.operators if names else []):
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [
            i
            for i in list(op.inputs if op.inputs is not None else [])
            + list(op.outputs if op.outputs is not None else [])
            if i >= 0
        ]
        if any(graph.tensors[i].type in floats for i in tensors):
            found[name] += 1
    return found
