"""Coral Edge TPU: a full-integer TFLite model that meets the Edge TPU's rules, plus a per-op mapping report.

Rules applied (Coral "TensorFlow models on the Edge TPU"): static shapes; int8 weights and activations with
integer (uint8/int8) IO; only the documented operations (table below) map to the TPU; the compiler maps the graph
up to the first unsupported op and everything after it runs on the CPU. GELU (and its tanh form's POW/TANH chain
is fine, but exact GELU is not) and BATCH_MATMUL are not in the table, so a ViT's attention falls back to the CPU
from its first block on: the report says so plainly. SCL-net uses only conv, depthwise conv, add, ReLU, average
pooling and mean, the realistic Edge TPU model.

`edgetpu_compiler` is not in any registry this kit can reach; when it is on PATH it is run on the model and its
log is parsed, otherwise the report says the compiler did not run and the mapping is a prediction from the table.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..errors import ExportError
from ..filesafety import Workdir
from .common import ExportJob, _write_json, atomic_copy, atomic_write_bytes, verify_artifact, write_sidecar
from .tflite.ops import op_names
from .tflite.target import build_tflite_variants, self_describing

# Documented Edge TPU operations (coral.ai/docs/edgetpu/models-intro, "Supported operations"), TFLite names.
EDGETPU_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation",
    "CONCATENATION": "no fused activation",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weight format only",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation",
    "MEAN": "no reduction over batch",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "not along batch",
    "PAD": "not along batch",
    "PRELU": "1-D alpha",
    "QUANTIZE": "",
    "REDUCE_MAX": "",
    "REDUCE_MIN": "",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "large reshapes may not map",
    "RESIZE_BILINEAR": "3-D",
    "RESIZE_NEAREST_NEIGHBOR": "3-D",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input, max 16000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "",
    "SUB": "",
    "SUM": "",
    "SQUARED_DIFFERENCE": "",
    "SQUARE": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}


def mapping_report(model_bytes: bytes) -> dict:
    ops = op_names(model_bytes)
    rows, first_bad = [], None
    for i, name in enumerate(ops):
        supported = name in EDGETPU_OPS
        if first_bad is None and not supported:
            first_bad = i
        if supported and first_bad is None:
            status = "Edge TPU"
        elif not supported:
            status = "CPU (operation not supported by the Edge TPU)"
        else:
            status = "CPU (after the first unsupported operation)"
        rows.append({"index": i, "op": name, "status": status, "note": EDGETPU_OPS.get(name, "")})
    on_tpu = sum(1 for r in rows if r["status"] == "Edge TPU")
    unsupported = sorted({r["op"] for r in rows if r["op"] not in EDGETPU_OPS})
    return {
        "ops_total": len(rows),
        "ops_on_edgetpu": on_tpu,
        "ops_on_cpu": len(rows) - on_tpu,
        "first_unsupported": None if first_bad is None else {"index": first_bad, "op": ops[first_bad]},
        "unsupported_ops": unsupported,
        "summary": (
            "every operation maps to the Edge TPU"
            if first_bad is None
            else f"{on_tpu} of {len(rows)} operations map to the Edge TPU; "
            f"from operation {first_bad} ({ops[first_bad]}) on, "
            f"the rest runs on the CPU (unsupported: {', '.join(unsupported)})"
        ),
        "ops": rows,
    }


def run_compiler(model: Path, out_dir: Path) -> dict:
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return {
            "ran": False,
            "reason": "edgetpu_compiler not found on PATH; the mapping above is predicted from the documented op table",
        }
    proc = subprocess.run([exe, "-s", "-o", str(out_dir), str(model)], capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    mapped = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+(\d+)\s+Mapped to Edge TPU", log, re.M)}
    return {"ran": True, "returncode": proc.returncode, "log": log[-20000:], "mapped_ops": mapped}


def export_edgetpu(job: ExportJob, recipe: dict) -> list[dict]:
    qcfg = dict(recipe.get("int8", {}))
    if qcfg.get("io_dtype", "uint8") == "float32" or qcfg.get("float_ops"):
        raise ExportError(f"{recipe['source']}: the Edge TPU needs full-integer models (integer IO, no float ops)")
    with Workdir(job.out_dir, "edgetpu") as tmp:
        data = build_tflite_variants(job, ["int8"], qcfg, tmp)["int8"]
        data, description = self_describing(
            job, data, target="edgetpu", runtime="litert", precision="int8", recipe=recipe
        )
        # LiteRT ignores the metadata; whether edgetpu_compiler copies it into its output is not verified here
        # (no compiler)
        report = mapping_report(data)
        out = job.out_dir / f"{job.stem}_edgetpu_ready_int8.tflite"
        atomic_write_bytes(out, data)
        compiler = run_compiler(out, tmp)
        compiled = None
        if compiler.get("ran") and compiler.get("returncode") == 0:
            produced = tmp / f"{out.stem}_edgetpu.tflite"
            if produced.is_file():
                compiled = job.out_dir / f"{job.stem}_edgetpu.tflite"
                atomic_copy(produced, compiled)
    extra = {
        "edgetpu": {"mapping": report, "compiler": compiler, "compiled_artifact": compiled.name if compiled else None}
    }
    meta = write_sidecar(job, out, description={**description, **extra})
    verification = verify_artifact(job, out, meta, recipe["verify"]["min_cosine"])
    _write_json(job.out_dir / f"{job.stem}_edgetpu_report.json", extra["edgetpu"])
    return [
        {"artifact": out, "precision": "int8", "verification": verification, "edgetpu": report, "compiler": compiler}
    ]
