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
    names = []
    for sg in model.subgraphs[:1]:
        for op in sg.operators or []:
            names.append(codes[op.opcodeIndex])
    return names


def op_counts(path_or_bytes: str | Path | bytes) -> Counter:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return Counter(op_names(data))


def flex_ops(model_bytes: bytes) -> list[str]:
    return sorted({n for n in op_names(model_bytes) if n.startswith("Flex")})
