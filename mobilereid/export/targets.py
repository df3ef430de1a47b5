"""The export targets, declared once: what each writes, which runtime verifies it, what it accepts.

The dispatch (``export_checkpoint``), the validation of ``--target``/``--board``/int16 requests, the CLI help and the
targets table of the docs (``scripts/gen_docs.py``) all read :data:`TARGETS`; adding a target is one entry here, one
module with ``export_<name>(job, recipe[, board])``, and its default recipes in ``mobilereid/recipes/`` (see
docs/architecture.md).

Precision names are the same on every target: ``fp32``; ``dynamic`` (int8 weights, activations quantized at run
time); ``int8`` (int8 weights and calibrated static int8 activations); ``int16x8`` (int16 activations, int8 weights);
``int8+int16`` (int8 with the recipe's op types in int16). A file's name ends in its precision.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import ExportError


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    runtime: str  # the runtime that verifies (and evaluates) the artifacts
    files: str  # the file names it writes, for people
    variants: tuple[str, ...]  # the precisions a recipe may ask for
    entry: str  # "module:function" of export_<name>(job, recipe[, board])
    in_all: bool  # part of `--target all`
    integer_only: bool  # runs full-integer models only (needs --int8)
    no_int16: str | None = None  # why int16 activations are not offered (None: per op type, through ai-edge-quantizer)
    takes_board: bool = False  # the recipe / --board name a board profile (mobilereid/recipes/boards.toml)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "onnx",
            "ONNX float model (the interchange format; float reference for other runtimes)",
            "onnxruntime",
            "STEM.onnx",
            ("fp32",),
            "mobilereid.export.onnx_target:export_onnx",
            in_all=True,
            integer_only=False,
            no_int16="the ONNX target writes the float model only",
        ),
        Target(
            "executorch",
            "ExecuTorch program lowered to XNNPACK (Android/iOS/Linux CPUs), PT2E quantization",
            "executorch",
            "STEM_xnnpack_PRECISION.pte",
            ("fp32", "dynamic", "int8"),
            "mobilereid.export.executorch_target:export_executorch",
            in_all=True,
            integer_only=False,
            no_int16="ExecuTorch's XNNPACK backend has no int16 kernels",
        ),
        Target(
            "tflite",
            "LiteRT (TFLite) flatbuffer for the XNNPACK CPU delegate, float and quantized",
            "litert",
            "STEM_PRECISION.tflite",
            ("fp32", "dynamic", "int8", "int16x8"),
            "mobilereid.export.tflite.target:export_tflite",
            in_all=True,
            integer_only=False,
        ),
        Target(
            "edgetpu",
            "Coral Edge TPU: a full-integer LiteRT model checked against the Edge TPU's op rules "
            "(compiled when edgetpu_compiler is installed)",
            "litert",
            "STEM_edgetpu_ready_int8.tflite",
            ("int8",),
            "mobilereid.export.edgetpu_target:export_edgetpu",
            in_all=True,
            integer_only=True,
            no_int16="the Edge TPU has no int16 kernels",
        ),
        Target(
            "tflm",
            "TensorFlow Lite Micro: full-integer model + C array, arena and flash measured for a board",
            "tflite-micro",
            "STEM_tflm_int8.tflite, STEM_model_data.{h,cc}",
            ("int8",),
            "mobilereid.export.tflm.target:export_tflm",
            in_all=False,
            integer_only=True,
            no_int16="the TFLite Micro route converts through onnx2tf, which has no per-op int16 choice",
            takes_board=True,
        ),
    )
}


def target_names() -> str:
    return ", ".join(TARGETS)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ExportError(f"unknown target {name!r}; choose from {target_names()} or all")
    return TARGETS[name]


def export_function(name: str):
    module, function = get_target(name).entry.split(":")
    return getattr(importlib.import_module(module), function)


def resolve_targets(target: str, int8: bool = True) -> list[str]:
    """The targets of a request, validated before any work: `all` means every target with ``in_all`` (without
    --int8, the ones that are not integer-only); an integer-only target named without --int8 is an error."""
    if target == "all":
        return [t.name for t in TARGETS.values() if t.in_all and (int8 or not t.integer_only)]
    names = list(dict.fromkeys(t.strip() for t in target.split(",") if t.strip()))  # each target once, in order
    if not names:
        raise ExportError(f"--target {target!r}: no target named")
    for name in names:
        if get_target(name).integer_only and not int8:
            raise ExportError(f"{name} runs full-integer models only: add --int8")
    return names


def cli_help() -> str:
    in_all = [t.name for t in TARGETS.values() if t.in_all]
    return (
        f"{target_names()}, a comma list, or all ({', '.join(n for n in in_all if not TARGETS[n].integer_only)}, "
        f"and {', '.join(n for n in in_all if TARGETS[n].integer_only)} with --int8)."
    )
