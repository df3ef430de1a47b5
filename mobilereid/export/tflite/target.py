"""TFLite: ONNX -> onnx2tf (SavedModel) -> TensorFlow's TFLiteConverter, fully offline, builtins only.

Why this split: onnx2tf is used only for what it is good at (ONNX NCHW graph -> NHWC TensorFlow graph); every
TFLite variant is then made by the official converter from that SavedModel, so the recipe controls quantization
directly: ``fp32``; ``dynamic`` (int8 weights, float activations); ``int8`` (full integer with int8 or uint8 IO,
calibrated on the recipe's images through the project's preprocessing; ``float_ops`` keeps named ops in float via
TensorFlow's QuantizationDebugger deny-list; ``activation_ranges`` picks how activation ranges are estimated from
the calibration images, see `activation_ranges`); ``int16x8`` (int16 activations, int8 weights).

Offline: onnx2tf 1.29.24 downloads a sample-image .npy whenever a model has one 4-D, 3-channel input; its module
global `download_test_image_data` is replaced, for the duration of the call, by a function returning this job's
calibration images (NHWC), so nothing is fetched. Only TFLITE_BUILTINS are allowed; if the converter still
produces a Select-TF (Flex) op, export fails and names it (exact GELU becomes FlexErf: use ``gelu=tanh``).

Simplification: onnx2tf runs onnx-simplifier as an ``onnxsim`` *subprocess* looked up on PATH, which is missing
whenever the venv is not activated (``.venv/bin/mobilereid``, ``make test``); it then silently converts the
unsimplified graph, whose shape subgraphs leave the batch dimension unknown, and its layout heuristics transpose
the patch-elimination one-hot (ViT export fails). So the project simplifies in-process with onnxsim's Python API
(the same three passes onnx2tf makes) and tells onnx2tf not to.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ...errors import ExportError
from ...filesafety import Workdir
from ..activation_ranges import RULES as RANGE_RULES
from ..activation_ranges import apply_range_rule
from ..common import (
    ExportJob,
    atomic_write_bytes,
    describe_artifact,
    tensor_spec,
    verify_artifact,
    write_sidecar,
)
from ..onnx_target import write_onnx
from ..targets import TARGETS
from .metadata import METADATA_NAME, embed_metadata
from .onnx_rewrites import zero_pad_relu_maxpools
from .ops import flex_ops, float_compute_ops

VARIANTS = TARGETS["tflite"].variants


@contextlib.contextmanager
def quiet():
    """onnx2tf and TensorFlow print pages of logs, ai-edge-quantizer a tqdm bar per step (it passes ``disable=``
    itself, so TQDM_DISABLE cannot stop them) to Python's stderr; keep them out of the user's terminal unless
    `--verbose`."""
    from ...chatter import verbose

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    buf = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(buf),
        contextlib.nullcontext() if verbose() else contextlib.redirect_stderr(buf),
    ):
        warnings.simplefilter("ignore")
        yield buf


def simplify_onnx(job: ExportJob, onnx_path: Path) -> None:
    """Constant-fold and simplify the ONNX file in place (static shapes everywhere), as onnx2tf would, then write
    padded max pools after ReLUs with zero padding (onnx_rewrites.py)."""
    import onnx
    from onnxsim import simplify

    model = onnx.load(str(onnx_path))
    for _ in range(3):
        try:
            model, ok = simplify(model)
        except Exception as exc:
            raise ExportError(f"onnx-simplifier failed on {job.stem}: {str(exc).splitlines()[0]}") from None
        if not ok:
            raise ExportError(f"onnx-simplifier changed the outputs of {job.stem}; refusing the simplified graph")
    zero_pad_relu_maxpools(model)  # after the simplifier, which would fuse the zero Pad back into the pool
    onnx.save(model, str(onnx_path))


def onnx_to_saved_model(job: ExportJob, onnx_path: Path, out_dir: Path) -> Path:
    import onnx2tf
    import onnx2tf.onnx2tf as o2t_module

    simplify_onnx(job, onnx_path)

    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))
    original = o2t_module.download_test_image_data
    o2t_module.download_test_image_data = lambda: calib_nhwc  # offline: never fetch sample data
    import tf_keras

    # Keras numbers layer names per process (model_11/tf.math.add_42); a fresh session makes the converted graph's
    # tensor names depend on the model only, so `mobilereid inspect` can match them with a reference conversion
    tf_keras.backend.clear_session()
    try:
        with quiet() as log:
            try:
                onnx2tf.convert(
                    input_onnx_file_path=str(onnx_path),
                    output_folder_path=str(out_dir),
                    non_verbose=True,
                    not_use_onnxsim=True,
                    copy_onnx_input_output_names_to_tflite=True,
                )
            except SystemExit:
                raise ExportError(
                    f"onnx2tf could not convert {job.stem}: {log.getvalue().strip().splitlines()[-1:]}"
                ) from None
    finally:
        o2t_module.download_test_image_data = original
    if not (out_dir / "saved_model.pb").is_file():
        raise ExportError(f"onnx2tf produced no SavedModel for {job.stem}")
    return out_dir


def image_dataset(images_nhwc: np.ndarray):
    """A TF converter dataset (callable yielding single-image batches) over NHWC float images."""

    def gen():
        for x in images_nhwc:
            yield [x[None].astype(np.float32)]

    return gen


def calibrated_converter(saved_model: Path, calib_nhwc: np.ndarray, qcfg: dict):
    """A TFLiteConverter set up for post-training integer quantization with the recipe's calibration images and
    per-channel choice; the caller picks the op sets / IO types (or hands it to the QuantizationDebugger)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = image_dataset(calib_nhwc[: int(qcfg.get("calibration_images", 64))])
    conv._experimental_disable_per_channel = not bool(qcfg.get("per_channel", True))
    return conv


def convert_variant(saved_model: Path, variant: str, calib_nhwc: np.ndarray, qcfg: dict) -> bytes:
    import tensorflow as tf

    if variant in ("fp32", "dynamic"):
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant == "dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        return conv.convert()
    conv = calibrated_converter(saved_model, calib_nhwc, qcfg)
    float_ops = list(qcfg.get("float_ops", []))
    float_nodes = list(qcfg.get("float_nodes", []))
    if variant == "int16x8":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return conv.convert()
    io_dtype = qcfg.get("io_dtype", "int8")
    rule = qcfg.get("activation_ranges", "default")
    if rule != "default":
        return quantize_with_range_rule(
            conv,
            calib_nhwc[: int(qcfg.get("calibration_images", 64))],
            rule,
            io_dtype,
            float_ops,
            float_nodes,
            bool(qcfg.get("per_channel", True)),
        )
    if float_ops or float_nodes:
        # selective quantization: named op types / layers (tensor names, from `mobilereid quant-sensitivity`)
        # stay float, so the model keeps float IO around them
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=conv,
            debug_dataset=conv.representative_dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=float_ops or None, denylisted_nodes=float_nodes or None
            ),
        )
        return debugger.get_nondebug_quantized_model()
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_dtype != "float32":
        conv.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
        conv.inference_output_type = conv.inference_input_type
    return conv.convert()


def quantize_with_range_rule(
    conv,
    images_nhwc: np.ndarray,
    rule: str,
    io_dtype: str,
    float_ops: list[str],
    float_nodes: list[str],
    per_channel: bool,
) -> bytes:
    """Full-integer model whose activation ranges follow ``rule`` (`activation_ranges`): the converter calibrates
    only, the ranges are replaced, and TensorFlow's MLIR quantizer (the converter's own next step) quantizes.
    Named float ops/layers keep float IO around them, as in the converter path."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv._experimental_calibrate_only = True
    calibrated = apply_range_rule(conv.convert(), images_nhwc, rule)
    io = (
        tf.float32
        if float_ops or float_nodes or io_dtype == "float32"
        else {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    )
    return mlir_quantize(
        calibrated,
        disable_per_channel=not per_channel,
        input_data_type=io,
        output_data_type=io,
        denylisted_ops=float_ops or None,
        denylisted_nodes=float_nodes or None,
    )


def io_specs(model_bytes: bytes) -> tuple[dict, dict]:
    from ...runtimes import litert_interpreter_class

    interp = litert_interpreter_class()(model_content=model_bytes)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]

    def spec(d, layout):
        scale, zp = d["quantization"]
        dtype = np.dtype(d["dtype"]).name
        return tensor_spec(
            d["name"], d["shape"], layout, dtype, (scale, zp) if dtype in ("int8", "uint8", "int16") and scale else None
        )

    return spec(i, "NHWC"), spec(o, None)


CONVERTERS = ("onnx2tf", "litert-torch")


def build_tflite_variants(
    job: ExportJob, variants: list[str], qcfg: dict, workdir: Path, converter: str = "onnx2tf"
) -> dict[str, bytes]:
    if converter not in CONVERTERS:
        raise ExportError(f"unknown TFLite converter {converter!r} (choose from {', '.join(CONVERTERS)})")
    for v in variants:
        if v not in VARIANTS:
            raise ExportError(f"unknown TFLite variant {v!r} (choose from {', '.join(VARIANTS)})")
    if converter == "litert-torch":  # its own range rules, checked by its check_recipe
        from .litert_torch_route import build_litert_torch_variants

        with quiet():
            out = build_litert_torch_variants(job, variants, qcfg)
        for v, data in out.items():
            _refuse_flex(job, v, data)
        return out
    if qcfg.get("activation_ranges") == "minmax":  # TensorFlow's converter records the extremes of all images itself
        qcfg = {**qcfg, "activation_ranges": "default"}
    if qcfg.get("activation_ranges", "default") not in RANGE_RULES:
        raise ExportError(
            f"unknown int8.activation_ranges {qcfg['activation_ranges']!r} "
            f"(choose from {', '.join(RANGE_RULES + ('minmax',))})"
        )
    saved = job.saved_model
    if saved is None or not (saved / "saved_model.pb").is_file():
        onnx_path = workdir / f"{job.stem}.onnx"
        write_onnx(job, onnx_path)
        saved = onnx_to_saved_model(job, onnx_path, (job.scratch or workdir) / "saved_model")
        if job.scratch is not None:
            job.saved_model = saved  # tflite, edgetpu and tflm targets of one export share the onnx2tf result
    calib_nhwc = np.ascontiguousarray(job.calib.transpose(0, 2, 3, 1))
    out = {}
    for v in variants:
        with quiet():
            try:
                data = convert_variant(saved, v, calib_nhwc, qcfg)
            except Exception as exc:
                text = " ".join(str(exc).split())
                needs_tf = select_tf_ops_in_error(text)
                if needs_tf:
                    raise ExportError(
                        f"TFLite {v} conversion of {job.stem} needs Select-TF (Flex) ops "
                        f"{', '.join('Flex' + n for n in needs_tf)}, which builtin LiteRT cannot run"
                        + (" (exact GELU: rebuild with --opt gelu=tanh)" if "Erf" in needs_tf else "")
                    ) from None
                raise ExportError(f"TFLite {v} conversion of {job.stem} failed: {text[:400]}") from None
        _refuse_flex(job, v, data)
        out[v] = data
    return out


def select_tf_ops_in_error(text: str) -> list[str]:
    """The TensorFlow ops a failed builtins-only conversion needs, from the converter's message: its "TF Select ops:"
    list when present, else the ``tf.Op`` names it quotes. TF op names start with a capital letter: the message also
    carries function attributes such as ``tf.entry_function``, which are not ops."""
    listed = re.search(r"TF Select ops: ([A-Z]\w*(?:, [A-Z]\w*)*)", text)
    if listed:
        return sorted(set(listed.group(1).split(", ")))
    return sorted(set(re.findall(r"\btf\.([A-Z]\w*)", text)))


def _refuse_flex(job: ExportJob, variant: str, data: bytes) -> None:
    flex = flex_ops(data)
    if flex:
        raise ExportError(
            f"TFLite {variant} model of {job.stem} needs Select-TF ops {', '.join(flex)}, "
            "which builtin LiteRT cannot run"
            + (" (exact GELU: rebuild with --opt gelu=tanh)" if "FlexErf" in flex else "")
        )


def converter_description(converter: str) -> str:
    if converter == "litert-torch":
        from .litert_torch_route import CONVERTER_NAME

        return CONVERTER_NAME
    return "onnx2tf 1.29.24 -> tf.lite.TFLiteConverter"


def self_describing(
    job: ExportJob, data: bytes, *, target: str, runtime: str, precision: str, recipe: dict, extra: dict | None = None
) -> tuple[bytes, dict]:
    """The model with its description embedded as flatbuffer metadata (`tflite.metadata`), and that description
    (IO specs read from the model itself) for the sidecar. Shared by the tflite, edgetpu and tflm targets."""
    in_spec, out_spec = io_specs(data)
    description = describe_artifact(
        job,
        target=target,
        runtime=runtime,
        precision=precision,
        input_spec=in_spec,
        output_spec=out_spec,
        recipe=recipe,
        extra={**(extra or {}), "embedded_metadata": METADATA_NAME},
    )
    return embed_metadata(data, description), description


def export_tflite(job: ExportJob, recipe: dict) -> list[dict]:
    qcfg = recipe.get("int8", {})
    results = []
    converter = recipe.get("converter", "onnx2tf")
    with Workdir(job.out_dir, "tflite") as tmp:
        models = build_tflite_variants(job, list(recipe["variants"]), qcfg, tmp, converter)
    int16_ops = [str(op).upper() for op in qcfg.get("int16_ops", [])]
    for variant, data in models.items():
        mixed = variant == "int8" and bool(int16_ops)
        precision = "int8+int16" if mixed else variant
        out = job.out_dir / f"{job.stem}_{'int8_int16' if mixed else variant}.tflite"
        extra = {"converter": converter_description(converter)}
        if variant in ("int8", "int16x8"):
            extra["float_ops_left"] = dict(sorted(float_compute_ops(data).items()))  # {} = full integer, checked
            if job.graph_rewrites.get(variant):
                extra["graph_rewrites"] = list(job.graph_rewrites[variant])
        if mixed:
            extra["int16_ops"] = int16_ops
        data, description = self_describing(
            job, data, target="tflite", runtime="litert", precision=precision, recipe=recipe, extra=extra
        )
        atomic_write_bytes(out, data)
        meta = write_sidecar(job, out, description=description)
        verification = verify_artifact(job, out, meta, recipe["verify"]["min_cosine"])
        results.append(
            {
                "artifact": out,
                "precision": precision,
                "verification": verification,
                **({"float_ops_left": extra["float_ops_left"]} if "float_ops_left" in extra else {}),
            }
        )
    return results
