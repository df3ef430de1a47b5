"""Self-describing .tflite files: the artifact's description (model, preprocessing, input/output tensors,
quantization, matching rule) embedded in the flatbuffer's own ``metadata`` table under the name ``mobilereid``.

Why this form: the TFLite schema gives every model a list of named metadata buffers (the converter already writes
``min_runtime_version`` and ``CONVERSION_METADATA`` there), and any flatbuffer reader can get them back without
the sidecar file; LiteRT ignores entries it does not know, so the model runs unchanged. The TFLite Support
"TFLITE_METADATA" schema was not used: its writer package (tflite-support) is unmaintained and needs numpy 1.x,
which this stack cannot install. The sidecar JSON stays the complete record (it adds the file hash and the
verification results, which cannot live inside the file they describe).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ExportError

METADATA_NAME = "mobilereid"

# what a device needs to run and match with the model, without the sidecar
EMBEDDED_KEYS = (
    "format",
    "format_version",
    "created_by",
    "target",
    "runtime",
    "precision",
    "model",
    "preprocess",
    "input",
    "output",
    "matching",
)


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def embed_metadata(model_bytes: bytes, description: dict) -> bytes:
    """Return the model with ``description`` (JSON) stored as metadata entry ``mobilereid`` (replacing an old one)."""
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    payload = json.dumps({k: description[k] for k in EMBEDDED_KEYS if k in description}, sort_keys=True).encode()
    buffer = schema.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    return flatbuffer_utils.convert_object_to_bytearray(model)


def _name(entry) -> str:
    return entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)


def read_metadata(path_or_bytes: str | Path | bytes) -> dict:
    """The embedded ``mobilereid`` description of a .tflite file; ExportError naming the file when it has none."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    label = "model" if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    schema = _schema()
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() and entry.Name().decode() == METADATA_NAME:
                return json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode())
    except Exception as exc:
        raise ExportError(f"{label}: not a readable .tflite flatbuffer ({exc})") from None
    raise ExportError(f"{label}: has no embedded '{METADATA_NAME}' metadata (exported by another tool?)")
