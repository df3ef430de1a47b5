"""ONNX (fp32): TorchScript-based `torch.onnx.export`, opset 17, static batch 1, verified in onnxruntime.

The legacy (TorchScript) exporter is used because the dynamo exporter needs onnxscript, which the pinned stack
does not carry; static shapes are what every downstream target wants anyway.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import ExportError
from ..filesafety import Workdir
from .common import ExportJob, atomic_copy, tensor_spec, unshared_graph, verify_artifact, write_sidecar

INPUT_NAME, OUTPUT_NAME = "images", "embedding"


def write_onnx(job: ExportJob, path: Path) -> None:
    model = job.model
    if (
        getattr(model, "family", None) == "external"
    ):  # a captured graph: one copy of each weight per op (unshare_weights)
        model = unshared_graph(job)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (job.example(),),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
        except Exception as exc:
            raise ExportError(f"ONNX export of {job.stem} failed: {str(exc).splitlines()[0]}") from None


def export_onnx(job: ExportJob, recipe: dict) -> list[dict]:
    out = job.out_dir / f"{job.stem}.onnx"
    with Workdir(job.out_dir, "onnx") as tmp:
        write_onnx(job, tmp / out.name)
        atomic_copy(tmp / out.name, out)
    h, w = job.spec.height, job.spec.width
    meta = write_sidecar(
        job,
        out,
        target="onnx",
        runtime="onnxruntime",
        precision="fp32",
        input_spec=tensor_spec(INPUT_NAME, (1, 3, h, w), "NCHW", "float32", None),
        output_spec=tensor_spec(
            OUTPUT_NAME, job.reference.shape[1:] and (1, job.reference.shape[1]), None, "float32", None
        ),
        recipe=recipe,
    )
    verification = verify_artifact(job, out, meta, recipe["verify"]["min_cosine"])
    return [{"artifact": out, "precision": "fp32", "verification": verification}]
