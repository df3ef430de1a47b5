"""The float model's intermediate tensors under the artifact's own tensor names.

A quantized .tflite and the fp32 .tflite converted from the same checkpoint through the same route (onnx2tf or
litert-torch) name their tensors alike (the converter names them after the graph, before quantization), so the
reference is made here: the ``--reference`` checkpoint converted to fp32 through the artifact's route, then run on
the same input with every tensor kept. An fp32 LiteRT model verifies against torch at cosine 1.0000 (export
verification), so its tensors stand for the float model's; matching is by exact tensor name, and rows whose name
the float model lacks (quantize/dequantize ops the quantizer inserted) are counted as unmatched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

_CONVERTED: dict[tuple, bytes] = {}  # one conversion per reference file and route in a process (evaluate --inspect)


def float_tflite_like(meta: dict, reference: Path, data: Path, threads: int) -> bytes:
    """The fp32 .tflite of ``reference`` through the converter that made the artifact described by ``meta``; kept
    for the process, keyed by the reference file's sha256 and the route (several artifacts of one model share it)."""
    from ..models.checkpoint import file_sha256

    converter = (meta.get("recipe") or {}).get("converter", "onnx2tf")
    key = (file_sha256(reference), converter)
    if key not in _CONVERTED:
        _CONVERTED[key] = _convert(reference, converter, data, threads)
    return _CONVERTED[key]


def _convert(reference: Path, converter: str, data: Path, threads: int) -> bytes:
    from ..export.run import make_job
    from ..export.tflite.target import build_tflite_variants
    from ..models.checkpoint import load_model

    model, state = load_model(reference)
    with tempfile.TemporaryDirectory(prefix="mobilereid-inspect-") as tmp:
        job = make_job(reference, model, state, data, tmp, n_calib=4, n_verify=2, threads=threads)
        job.scratch = Path(tmp)
        return build_tflite_variants(job, ["fp32"], {}, Path(tmp), converter)["fp32"]
