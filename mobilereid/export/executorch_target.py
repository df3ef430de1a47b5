"""ExecuTorch (.pte) lowered to XNNPACK, fp32 and INT8 (PT2E), as ExecuTorch's own examples do it.

Flow: `torch.export` -> (INT8: `prepare_pt2e` with `XNNPACKQuantizer` (symmetric, per-channel weights; static with
calibration on the recipe's images through the project's preprocessing, or dynamic activations) -> calibrate ->
`convert_pt2e` -> `torch.export` again) -> `to_edge_transform_and_lower(..., XnnpackPartitioner())` ->
`to_executorch()`. The delegation summary (which ops run inside XNNPACK and which stay on the portable CPU
kernels) is read from the lowered graph and written into the sidecar.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager

import torch

from ..errors import ExportError
from .activation_ranges import executorch_activation_observer
from .common import ExportJob, atomic_write_bytes, tensor_spec, unshare_weights, verify_artifact, write_sidecar
from .pt2e_batchnorm import batchnorms_as_affine
from .targets import TARGETS

# recipe name -> the aten op whose XNNPACKQuantizer patterns quantize it (looked up late: torch.ops)
QUANTIZABLE_OPS = {
    "linear": lambda: torch.ops.aten.linear.default,
    "conv2d": lambda: torch.ops.aten.conv2d.default,
    "add": lambda: torch.ops.aten.add.Tensor,
    "mul": lambda: torch.ops.aten.mul.Tensor,
    "cat": lambda: torch.ops.aten.cat.default,
    "adaptive_avg_pool2d": lambda: torch.ops.aten.adaptive_avg_pool2d.default,
}


def configure_quantizer(quantizer, config, qcfg: dict, model: torch.nn.Module) -> None:
    """Which ops get ``config``: all XNNPACKQuantizer patterns (no ``ops`` key), or only the named op types
    (``ops``, `QUANTIZABLE_OPS`); linears inside modules whose names match a ``dynamic_modules`` pattern get dynamic
    int8 activations instead (int8 weights, activation scale per run): the measured exception for layers whose
    static activation range does not hold."""
    import re

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    ops = qcfg.get("ops")
    if ops is None:
        quantizer.set_global(config)
    for name in ops or []:
        if name not in QUANTIZABLE_OPS:
            raise ExportError(f"int8.ops: unknown op {name!r} (choose from {', '.join(QUANTIZABLE_OPS)})")
        quantizer.set_operator_type(QUANTIZABLE_OPS[name](), config)
    patterns = list(qcfg.get("dynamic_modules", []))
    if patterns:
        dynamic = get_symmetric_quantization_config(is_per_channel=bool(qcfg.get("per_channel", True)), is_dynamic=True)
        matched = [
            name
            for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and any(re.search(p, name) for p in patterns)
        ]
        if not matched:
            raise ExportError(f"int8.dynamic_modules {patterns}: no linear layer of the model matches")
        for name in matched:
            quantizer.set_module_name(name, dynamic)


def delegation_report(edge_program) -> dict:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_program.exported_program().graph_module)
    ops = {}
    for name, row in info.delegation_by_operator.items():
        ops[name] = {"delegated": int(row.delegated), "not_delegated": int(row.non_delegated)}
    return {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": int(info.num_delegated_nodes),
        "non_delegated_nodes": int(info.num_non_delegated_nodes),
        "ops": ops,
        "not_delegated_ops": sorted(k for k, v in ops.items() if v["not_delegated"] > 0),
    }


def io_spec(job: ExportJob) -> dict:
    """Input and output tensors of the lowered program (float NCHW image in, float embedding out)."""
    return {
        "input": tensor_spec("x", (1, 3, job.spec.height, job.spec.width), "NCHW", "float32", None),
        "output": tensor_spec("embedding", (1, job.reference.shape[1]), None, "float32", None),
    }


def lower(job: ExportJob, int8: bool, qcfg: dict, label: str) -> tuple[bytes, dict]:
    """The XNNPACK-lowered program and its delegation report; a failure is one ExportError naming ``label``."""
    try:
        return _lower(job, int8, qcfg)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"ExecuTorch lowering of {job.stem} ({label}) failed: {str(exc).splitlines()[0][:300]}"
        ) from None


def _lower(job: ExportJob, int8: bool, qcfg: dict) -> tuple[bytes, dict]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = program_to_lower(job, int8, qcfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        report = delegation_report(edge)
        program = edge.to_executorch()
    return program.buffer, report


@contextmanager
def one_torch_thread():
    """Calibration on one torch thread. Float kernels sum in a different order on 1 and 2 threads, observers then
    record ranges a few ULP apart and some weights or activations round to the other integer: the same checkpoint
    gave INT8 programs with outputs up to 0.76 apart (cosine 0.987) when exported with 1 or 2 threads (pipeline
    exports run on either). One thread makes the program a function of checkpoint and images alone, so
    ``mobilereid inspect`` can rebuild it bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def program_to_lower(job: ExportJob, int8: bool, qcfg: dict):
    """The exported program handed to XNNPACK's partitioner: the float model, or its PT2E-quantized graph (Q/DQ
    nodes, calibrated on the job's images). ``mobilereid inspect`` lowers the same program one op per partition."""
    example = (job.example(),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(job.model, example)
        if not int8:
            return ep
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        dynamic = qcfg.get("mode", "static") == "dynamic"
        config = get_symmetric_quantization_config(
            is_per_channel=bool(qcfg.get("per_channel", True)), is_dynamic=dynamic
        )
        observer = None if dynamic else executorch_activation_observer(qcfg.get("activation_ranges", "default"))
        if observer is not None:  # same activation range rule as the TFLite route (activation_ranges.py)
            act = dataclasses.replace(
                config.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12)
            )
            config = dataclasses.replace(config, input_activation=act, output_activation=act)
        quantizer = XNNPACKQuantizer()
        n = int(qcfg.get("calibration_images", 64))
        source = job.model
        if not dynamic and qcfg.get("smooth_alpha") is not None:  # SmoothQuant scale migration (smoothing.py)
            from .smoothing import smooth_layernorm_outputs

            with one_torch_thread():
                source = smooth_layernorm_outputs(job.model, job.calib[:n], float(qcfg["smooth_alpha"]))
            ep = torch.export.export(source, example)
        configure_quantizer(quantizer, config, qcfg, source)
        m = torch.export.export(unshare_weights(ep.module()), example).module()  # re-exported: fresh node metadata
        m = prepare_pt2e(m, quantizer)
        with torch.no_grad(), one_torch_thread():
            for x in job.calib[:n]:
                m(torch.from_numpy(x[None].copy()))
        batchnorms_as_affine(m)  # same numbers; spares convert_pt2e a QAT pattern search (pt2e_batchnorm.py)
        m = convert_pt2e(m)
        return torch.export.export(m, example)


def variant_settings(recipe: dict, variant: str) -> dict:
    """The variant names the mode (targets.py): ``dynamic`` takes ``[int8]`` with activations quantized at run time;
    ``int8`` takes ``[int8]`` overridden by ``[int8_static]`` (settings only the static model uses, e.g. the ViT's
    ``dynamic_modules``), with calibrated static activations."""
    base = dict(recipe.get("int8", {}))
    if variant == "dynamic":
        return {**base, "mode": "dynamic"}
    return {**base, **recipe.get("int8_static", {}), "mode": "static"}


VARIANTS = TARGETS["executorch"].variants


def export_executorch(job: ExportJob, recipe: dict) -> list[dict]:
    results = []
    for variant in recipe["variants"]:
        if variant not in VARIANTS:
            raise ExportError(f"{recipe['source']}: unknown ExecuTorch variant {variant!r} ({', '.join(VARIANTS)})")
        int8 = variant != "fp32"
        qcfg = variant_settings(recipe, variant)
        buffer, report = lower(job, int8, qcfg, variant)
        precision = variant  # fp32, dynamic or int8: the file name ends in it
        out = job.out_dir / f"{job.stem}_xnnpack_{variant}.pte"
        atomic_write_bytes(out, buffer)
        io = io_spec(job)
        meta = write_sidecar(
            job,
            out,
            target="executorch",
            runtime="executorch",
            precision=precision,
            input_spec=io["input"],
            output_spec=io["output"],
            recipe=recipe,
            extra={"delegation": report, "backend": "XNNPACK"},
        )
        verification = verify_artifact(job, out, meta, recipe["verify"]["min_cosine"])
        results.append({"artifact": out, "precision": precision, "verification": verification, "delegation": report})
    return results
