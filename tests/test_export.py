"""Export tests: tiny presets through every target, each artifact run in its real runtime."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import CheckpointError, ExportError
from mobilereid.export import export_checkpoint
from mobilereid.export.tflite.ops import float_compute_ops, op_counts
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint
from mobilereid.runtimes import open_runner, read_sidecar

runner = CliRunner()


@pytest.fixture(scope="module")
def sclnet_all(sclnet_exports):
    return sclnet_exports


@pytest.mark.slow
def test_every_target_exports_and_verifies(sclnet_all):
    out, results = sclnet_all
    got = {(r["target"], r["precision"]) for r in results}
    assert got == {
        ("onnx", "fp32"),
        ("executorch", "fp32"),
        ("executorch", "int8"),
        ("tflite", "fp32"),
        ("tflite", "dynamic"),
        ("tflite", "int8"),
        ("edgetpu", "int8"),
    }
    for r in results:
        v = r["verification"]
        assert v["passed"] and v["cosine_mean"] >= 0.99, (r["artifact"], v)
    # nothing half-written is left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sidecar_is_the_contract(sclnet_all, sclnet_ckpt, tiny_dataset):
    out, results = sclnet_all
    int8 = next(r for r in results if r["target"] == "tflite" and r["precision"] == "int8")
    meta = read_sidecar(int8["artifact"])
    assert meta["input"]["dtype"] == "int8" and meta["input"]["layout"] == "NHWC"
    assert meta["input"]["shape"] == [1, 64, 32, 3]
    assert meta["input"]["quantization"]["scale"] > 0 and meta["output"]["quantization"] is not None
    assert meta["preprocess"]["colour_order"] == "RGB" and meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["model"]["embedding_dim"] == 128 and meta["model"]["source_sha256"]
    import hashlib

    assert meta["sha256"] == hashlib.sha256(int8["artifact"].read_bytes()).hexdigest()
    assert meta["verification"]["runtime"] == "litert"
    # the .tflite carries its own description in the flatbuffer metadata table, equal to the sidecar's
    from mobilereid.export.tflite.metadata import read_metadata

    embedded = read_metadata(int8["artifact"])
    assert meta["embedded_metadata"] == "mobilereid"
    for key in ("input", "output", "preprocess", "model", "precision"):
        assert embedded[key] == meta[key], key
    # so does the Edge TPU model (the TFLite Micro one: tests/test_tflm.py)
    edgetpu = next(r["artifact"] for r in results if r["target"] == "edgetpu")
    assert (
        read_metadata(edgetpu)["input"] == read_sidecar(edgetpu)["input"]
        and read_metadata(edgetpu)["target"] == "edgetpu"
    )
    from tensorflow.lite.tools import flatbuffer_utils

    bare = flatbuffer_utils.read_model_from_bytearray(bytearray(int8["artifact"].read_bytes()))
    bare.metadata = [m for m in bare.metadata if m.name.decode() != "mobilereid"]
    with pytest.raises(ExportError, match="no embedded 'mobilereid' metadata"):
        read_metadata(bytes(flatbuffer_utils.convert_object_to_bytearray(bare)))
    # the same sidecar drives a fresh runner to the same numbers
    from mobilereid.data.preprocess import PreprocessSpec
    from mobilereid.export.calibration import calibration_files, load_batch

    _, verify = calibration_files(tiny_dataset, 4, 4)
    x = load_batch(verify, PreprocessSpec.from_dict(meta["preprocess"]))
    emb = open_runner(int8["artifact"]).embed(x)
    assert emb.shape == (len(x), 128) and np.isfinite(emb).all()
    pte = next(r for r in results if r["target"] == "executorch" and r["precision"] == "int8")
    assert read_sidecar(pte["artifact"])["delegation"]["delegated_subgraphs"] >= 1


@pytest.mark.slow
def test_int8_tflite_is_integer_only_and_small(sclnet_all):
    out, results = sclnet_all
    fp32 = next(r["artifact"] for r in results if r["target"] == "tflite" and r["precision"] == "fp32")
    int8 = next(r["artifact"] for r in results if r["target"] == "tflite" and r["precision"] == "int8")
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    ops = op_counts(int8)
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops and not any(o.startswith("Flex") for o in ops)


def test_size_breakdown_accounts_for_per_channel_quantization(sclnet_all, sclnet_ckpt):
    from mobilereid.export.tflite.size import breakdown_line, size_breakdown
    from mobilereid.models.checkpoint import load_checkpoint

    out, results = sclnet_all
    model, _ = load_checkpoint(sclnet_ckpt)
    deployed = [
        m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and not name.startswith("shallow")
    ]
    pools = [b for name, b in model.named_buffers() if name.endswith("kernel")]  # AvgPool2x2 as depthwise conv
    weights = sum(m.weight.numel() for m in deployed) + sum(b.numel() for b in pools)
    channels = sum(m.out_channels for m in deployed) + sum(b.shape[0] for b in pools)
    size = {r["precision"]: size_breakdown(r["artifact"].read_bytes()) for r in results if r["target"] == "tflite"}
    assert size["fp32"]["quantization_parameter_bytes"] == 0 and size["fp32"]["per_channel_entries"] == 0
    assert abs(size["int8"]["constant_bytes"]["int8"] - weights) < 0.01 * weights  # one byte per conv weight
    # each conv: per-channel scales + zero points for its weights and for its int32 bias
    assert size["int8"]["per_channel_entries"] == 2 * channels
    assert size["int8"]["quantization_parameter_bytes"] >= 12 * size["int8"]["per_channel_entries"]
    assert 0 < size["int8"]["other_bytes"] < 0.2 * size["int8"]["total_bytes"]
    assert "quantization parameters" in breakdown_line(size["int8"])


@pytest.mark.slow
def test_litert_delegation_report_accounts_for_every_op(sclnet_all):
    from mobilereid.export.tflite.delegation import delegation_report

    out, results = sclnet_all
    for r in results:
        if r["target"] != "tflite":
            continue
        runner_ = open_runner(r["artifact"])
        report = delegation_report(runner_.interp)
        assert report["total_ops"] == sum(op_counts(r["artifact"]).values())
        assert report["delegated_ops"] + sum(report["cpu_ops"].values()) == report["total_ops"]
        assert report["partitions"] >= 1 and report["delegated_ops"] > 0, (r["precision"], report)
        if r["precision"] in ("fp32", "int8"):
            # SCL-net is built from ops XNNPACK takes in float and int8: one partition, nothing left outside
            assert report["partitions"] == 1 and not report["cpu_ops"], (r["precision"], report)


def _input_scale(path) -> float:
    return float(open_runner(path).interp.get_input_details()[0]["quantization"][0])


@pytest.mark.slow
def test_per_image_activation_ranges_are_narrower(sclnet_all, sclnet_ckpt, tiny_dataset, tmp_path):
    out, results = sclnet_all  # the default SCL-net recipe uses activation_ranges = "p90_minmax"
    mean_int8 = next(r for r in results if r["target"] == "tflite" and r["precision"] == "int8")
    assert read_sidecar(mean_int8["artifact"])["recipe"]["int8"]["activation_ranges"] == "p90_minmax"
    recipe = tmp_path / "default_ranges.toml"
    recipe.write_text('target = "tflite"\nvariants = ["int8"]\n\n[int8]\nactivation_ranges = "default"\n')
    (extremes,) = export_checkpoint(sclnet_ckpt, "tflite", tiny_dataset, tmp_path / "o", int8=True, recipe_path=recipe)
    assert extremes["verification"]["passed"] and read_sidecar(extremes["artifact"])["input"]["dtype"] == "int8"
    # the input's range: mean of each image's extremes vs extremes over all calibration images (tensor names of
    # the two conversion paths differ, so the input is the tensor compared)
    assert 0 < _input_scale(mean_int8["artifact"]) < 0.98 * _input_scale(extremes["artifact"])
    recipe.write_text('target = "tflite"\nvariants = ["int8"]\n\n[int8]\nactivation_ranges = "p99"\n')
    with pytest.raises(ExportError, match="unknown int8.activation_ranges 'p99'"):
        export_checkpoint(sclnet_ckpt, "tflite", tiny_dataset, tmp_path / "bad", int8=True, recipe_path=recipe)
    assert not (tmp_path / "bad" / "sclnet_test_int8.tflite").exists()


def test_executorch_observers_combine_batch_extremes_like_the_tflite_route():
    from mobilereid.export.activation_ranges import combine_extremes, executorch_activation_observer

    assert executorch_activation_observer("default") is None
    batches = ((-1.0, 2.0), (-3.0, 4.0), (0.0, 9.0), (-0.5, 1.0), (-2.0, 3.0))
    for rule in ("mean_minmax", "p90_minmax"):
        obs = executorch_activation_observer(rule)(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
        for lo, hi in batches:
            obs(torch.tensor([lo, 0.5, hi]))
        lo, hi = combine_extremes(rule, np.array([[b[0]] for b in batches]), np.array([[b[1]] for b in batches]))
        assert obs.min_val.item() == pytest.approx(lo[0]) and obs.max_val.item() == pytest.approx(hi[0])
    lo, hi = combine_extremes("mean_minmax", np.array([[-1.0], [-3.0], [0.0]]), np.array([[2.0], [4.0], [9.0]]))
    assert lo[0] == pytest.approx(-4.0 / 3) and hi[0] == pytest.approx(5.0)
    # p90 of the per-image maxima: the one image running far higher no longer sets the range; p10 of the minima
    lo, hi = combine_extremes("p90_minmax", -np.arange(11.0)[:, None], np.array([1.0] * 10 + [100.0])[:, None])
    assert hi[0] == pytest.approx(1.0) and lo[0] == pytest.approx(-9.0)
    with pytest.raises(ExportError, match="unknown int8.activation_ranges"):
        executorch_activation_observer("histogram")


@pytest.mark.slow
def test_edgetpu_report_without_compiler(sclnet_all):
    out, results = sclnet_all
    r = next(r for r in results if r["target"] == "edgetpu")
    assert r["edgetpu"]["ops_on_cpu"] == 0 and r["edgetpu"]["first_unsupported"] is None
    assert r["compiler"]["ran"] is False and "not found on PATH" in r["compiler"]["reason"]
    assert read_sidecar(r["artifact"])["input"]["dtype"] == "uint8"
    assert json.loads((out / "sclnet_test_edgetpu_report.json").read_text())["mapping"]["ops_total"] > 10


@pytest.mark.slow
def test_vit_tflite_onnx2tf_route_with_tanh_gelu_and_flex_error_for_exact_gelu(tiny_dataset, tmp_path):
    onnx2tf = tmp_path / "onnx2tf.toml"
    onnx2tf.write_text('target = "tflite"\nconverter = "onnx2tf"\nvariants = ["fp32"]\n')
    ok = save_checkpoint(tmp_path / "vit_tanh.pt", build_model("vit_test", gelu="tanh", keep_ratio=0.75).eval())
    results = export_checkpoint(ok, "tflite", tiny_dataset, tmp_path / "a", recipe_path=onnx2tf)
    assert results[0]["verification"]["cosine_mean"] > 0.999
    assert read_sidecar(results[0]["artifact"])["converter"].startswith("onnx2tf")
    exact = save_checkpoint(tmp_path / "vit_exact.pt", build_model("vit_test", gelu="exact").eval())
    with pytest.raises(ExportError, match="Erf") as err:
        export_checkpoint(exact, "tflite", tiny_dataset, tmp_path / "b", recipe_path=onnx2tf)
    assert "entry_function" not in str(err.value)  # the converter's message quotes tf.entry_function: not an op
    assert not list((tmp_path / "b").glob("*.tflite"))


def test_select_tf_ops_are_read_from_the_real_converter_message(tmp_path):
    """A builtins-only conversion of tf.math.erf fails; the message names TF Select op Erf and also carries
    ``tf.entry_function`` (a function attribute), which must not be reported as an op (it was: 'Flexentry_function')."""
    import tensorflow as tf

    from mobilereid.export.tflite.target import select_tf_ops_in_error

    class Erf(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.math.erf(x) * 2.0

    tf.saved_model.save(Erf(), str(tmp_path / "sm"))
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with pytest.raises(Exception) as exc:
        conv.convert()
    text = " ".join(str(exc.value).split())
    assert "tf.entry_function" in text  # what misled the old parser is really there
    assert select_tf_ops_in_error(text) == ["Erf"]
    assert select_tf_ops_in_error("'tf.Erf' op is neither a custom op nor a flex op; tf.entry_function") == ["Erf"]


@pytest.mark.slow
def test_batch_norm_vit_full_int8_tflite_has_no_layernorm_arithmetic(tiny_dataset, tmp_path):
    """norm = "batch" (models/vit.py): the full-int8 LiteRT graph keeps no LayerNorm decomposition (no mean, variance
    or reciprocal square root over channels), which is what collapses a full-int8 LayerNorm ViT; the LayerNorm ViT's
    graph has it, exported the same way."""
    recipe = tmp_path / "int8.toml"
    recipe.write_text('target = "tflite"\nvariants = ["int8"]\n\n[verify]\nmin_cosine = 0.5\n')
    layer_norm_arithmetic = {"RSQRT", "MEAN", "SQUARED_DIFFERENCE"}
    ops = {}
    for norm in ("layer", "batch"):
        torch.manual_seed(0)
        ckpt = save_checkpoint(tmp_path / f"vit_{norm}.pt", build_model("vit_test", gelu="tanh", norm=norm).eval())
        (r,) = export_checkpoint(ckpt, "tflite", tiny_dataset, tmp_path / norm, int8=True, recipe_path=recipe)
        assert r["verification"]["passed"] and read_sidecar(r["artifact"])["input"]["dtype"] == "int8"
        ops[norm] = op_counts(r["artifact"])
    assert layer_norm_arithmetic & set(ops["layer"]), ops["layer"]
    assert not layer_norm_arithmetic & set(ops["batch"]), ops["batch"]
    assert ops["batch"]["FULLY_CONNECTED"] == ops["layer"]["FULLY_CONNECTED"]


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, ["block 0 class-token LayerNorm as a constant", "5 LayerNorm squares as MUL"]),
        ({"windows": 2, "window_start": 0}, ["5 LayerNorm squares as MUL"]),  # block 0 runs once per window: not stored
        ({"norm": "batch"}, []),
    ],
)
def test_integer_friendly_rewrites_keep_the_function(options, expected):
    """export/integer_friendly.py: the rewritten ViT computes the same embeddings (float), the class-token row is
    stored only where block 0 sees one constant row, the user's model is left untouched, and a model without
    LayerNorm passes unchanged."""
    from mobilereid.export.integer_friendly import integer_friendly

    torch.manual_seed(0)
    model = build_model("vit_test", gelu="tanh", **options).eval()
    images = torch.randn(3, 3, 64, 32)
    for divide in (False, True):  # int8 graphs keep RSQRT, int16 graphs take SQRT + DIV
        rewritten, rewrites = integer_friendly(model, images, divide=divide)
        assert rewrites == [
            r + (", reciprocal square roots as SQRT + DIV" if divide and "MUL" in r else "") for r in expected
        ]
        assert not any(type(m).__name__ == "DecomposedLayerNorm" for m in model.modules())  # a copy was rewritten
        with torch.no_grad():
            assert torch.allclose(rewritten(images), model(images), atol=1e-4)


def _activation_types(path) -> dict[str, set[str]]:
    """op type -> the dtypes its outputs have in the LiteRT interpreter's view of the model."""
    from mobilereid.runtimes import litert_interpreter_class

    interp = litert_interpreter_class()(model_path=str(path))
    dtypes = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
    seen: dict[str, set[str]] = {}
    for op in interp._get_ops_details():
        seen.setdefault(op["op_name"], set()).update(dtypes[i] for i in op["outputs"])
    return seen


@pytest.mark.slow
def test_int8_with_int16_op_types_is_full_integer_and_checked(tiny_dataset, tmp_path):
    """int8.int16_ops (litert-torch route, issue 15): the int8 model with int16 activations for the named op types
    only — every ADD writes int16, every FULLY_CONNECTED int8 —, no float op left (checked in the graph, recorded in
    the sidecar), verified in LiteRT. The LayerNorm ViT's int16x8 is full integer thanks to the integer-friendly
    graph (without it ai-edge-quantizer leaves SQUARED_DIFFERENCE in float). A model whose graph keeps float ops
    is seen as such (the check finds every op of an fp32 model that computes in float), and patch elimination's
    selection is integer too; asking int16 for an op ai-edge-quantizer cannot give it, or for an op type the graph
    lacks, is a one-line error, nothing written."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", gelu="tanh").eval())
    recipe = tmp_path / "mixed.toml"
    recipe.write_text(
        'target = "tflite"\nvariants = ["int8", "int16x8"]\n\n[int8]\nint16_ops = ["add"]\n'
        'activation_ranges = "minmax"\n\n[verify]\nmin_cosine = 0.5\n'
    )
    mixed, int16x8 = export_checkpoint(ckpt, "tflite", tiny_dataset, tmp_path / "e", int8=True, recipe_path=recipe)
    assert mixed["artifact"].name == "vit_int8_int16.tflite" and mixed["precision"] == "int8+int16"
    assert mixed["verification"]["passed"] and mixed["float_ops_left"] == {}
    meta = read_sidecar(mixed["artifact"])
    assert meta["int16_ops"] == ["ADD"] and meta["float_ops_left"] == {} and meta["input"]["dtype"] == "int8"
    types = _activation_types(mixed["artifact"])
    assert types["ADD"] == {"int16"} and types["FULLY_CONNECTED"] == {"int8"} and types["SOFTMAX"] == {"int8"}
    assert "float32" not in set().union(*types.values())
    assert int16x8["float_ops_left"] == {} and int16x8["verification"]["cosine_mean"] > 0.99
    assert "SQUARED_DIFFERENCE" not in op_counts(int16x8["artifact"])
    assert (
        read_sidecar(int16x8["artifact"])["graph_rewrites"][-1]
        == "5 LayerNorm squares as MUL, reciprocal square roots as SQRT + DIV"
    )
    assert read_sidecar(mixed["artifact"])["graph_rewrites"][-1] == "5 LayerNorm squares as MUL"  # int8: RSQRT stays
    # int16 headroom (the ViT recipe: 2): the int16x8 ranges are twice the calibrated extremes, the int8 ones are not
    recipe.write_text(
        'target = "tflite"\nvariants = ["int16x8"]\n\n[int8]\nactivation_ranges = "minmax"\n'
        "int16_headroom = 1.0\n\n[verify]\nmin_cosine = 0.5\n"
    )
    (tight,) = export_checkpoint(ckpt, "tflite", tiny_dataset, tmp_path / "h1", int8=True, recipe_path=recipe)
    wide, narrow = (read_sidecar(r["artifact"])["input"]["quantization"]["scale"] for r in (int16x8, tight))
    assert wide == pytest.approx(2 * narrow, rel=1e-4) and tight["verification"]["passed"]
    assert "RSQRT" not in op_counts(int16x8["artifact"]) and "RSQRT" in op_counts(mixed["artifact"])
    keep = save_checkpoint(tmp_path / "keep.pt", build_model("vit_test", gelu="tanh", keep_ratio=0.75).eval())
    recipe.write_text('target = "tflite"\nvariants = ["fp32", "int16x8"]\n\n[verify]\nmin_cosine = 0.5\n')
    fp32, r = export_checkpoint(keep, "tflite", tiny_dataset, tmp_path / "k", int8=True, recipe_path=recipe)
    # patch elimination's top-k selection quantizes too (MAXIMUM/EQUAL instead of GREATER, selects instead of casts)
    assert r["float_ops_left"] == {} and {"MAXIMUM", "EQUAL", "SELECT_V2"} <= set(op_counts(r["artifact"]))
    floats, ops = float_compute_ops(fp32["artifact"].read_bytes()), op_counts(fp32["artifact"])  # the check sees float
    assert all(floats[op] == ops[op] > 0 for op in ("FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "MAXIMUM"))
    for model, ops, msg in (
        (keep, ["LOGICAL_OR"], "names LOGICAL_OR, which has no int16 kernel configuration"),
        (ckpt, ["LOGISTIC"], "names 'LOGISTIC', but the LiteRT graph of vit has no LOGISTIC op"),
    ):
        recipe.write_text(f'target = "tflite"\nvariants = ["int8"]\n\n[int8]\nint16_ops = {json.dumps(ops)}\n')
        with pytest.raises(ExportError, match=msg):
            export_checkpoint(model, "tflite", tiny_dataset, tmp_path / "bad", int8=True, recipe_path=recipe)
        assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


def test_vit_tflite_default_route_is_litert_torch_and_takes_exact_gelu(tiny_dataset, tmp_path):
    from mobilereid.export.tflite.delegation import delegation_report

    # no patch elimination here: its top-k selection (comparisons, casts, a sum) is what XNNPACK leaves outside
    exact = save_checkpoint(tmp_path / "vit_exact.pt", build_model("vit_test", gelu="exact").eval())
    results = export_checkpoint(exact, "tflite", tiny_dataset, tmp_path / "lt", int8=True)
    assert [r["precision"] for r in results] == ["fp32", "dynamic", "int16x8"]  # the ViT recipe's variants
    integer = results.pop()  # the full-integer ViT: int16 activations, nothing left in float, verified
    assert integer["verification"]["passed"] and integer["float_ops_left"] == {}
    assert read_sidecar(integer["artifact"])["input"]["dtype"] == "int16" and "GELU" in op_counts(integer["artifact"])
    for r in results:
        meta = read_sidecar(r["artifact"])
        assert meta["converter"].startswith("litert-torch") and meta["input"]["layout"] == "NHWC"
        assert meta["input"]["shape"] == [1, 64, 32, 3]
        ops = op_counts(r["artifact"])
        assert "GELU" in ops and not any(o.startswith("Flex") for o in ops)  # exact GELU stays one builtin op
        assert r["verification"]["passed"] and r["verification"]["cosine_mean"] > (
            0.9999 if r["precision"] == "fp32" else 0.99
        )
        # fp32 and dynamic: one XNNPACK partition, nothing left on LiteRT's own kernels
        report = delegation_report(open_runner(r["artifact"]).interp)
        assert report["partitions"] == 1 and not report["cpu_ops"], report
    # full int8 on request (ai-edge-quantizer static a8w8, int8 IO) runs and is verified too
    recipe = tmp_path / "int8.toml"
    recipe.write_text('target = "tflite"\nvariants = ["int8"]\n\n[verify]\nmin_cosine = 0.5\n')
    (int8,) = export_checkpoint(exact, "tflite", tiny_dataset, tmp_path / "lt8", int8=True, recipe_path=recipe)
    assert int8["verification"]["passed"] and read_sidecar(int8["artifact"])["input"]["dtype"] == "int8"
    assert "FULLY_CONNECTED" in op_counts(int8["artifact"])
    recipe.write_text('target = "tflite"\nvariants = ["fp16"]\n')
    with pytest.raises(
        ExportError, match=r"unknown tflite variant\(s\) fp16 \(choose from fp32, dynamic, int8, int16x8\)"
    ):
        export_checkpoint(exact, "tflite", tiny_dataset, tmp_path / "bad", int8=True, recipe_path=recipe)


@pytest.mark.slow
def test_vit_edgetpu_report_says_what_stays_on_cpu(tiny_dataset, tmp_path):
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", gelu="tanh").eval())
    r = export_checkpoint(ckpt, "edgetpu", tiny_dataset, tmp_path / "e", int8=True)[0]
    assert r["edgetpu"]["first_unsupported"] is not None
    assert "BATCH_MATMUL" in r["edgetpu"]["unsupported_ops"] and "runs on the CPU" in r["edgetpu"]["summary"]


def test_errors(sclnet_ckpt, tiny_dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="calibration set holds no images"):
        export_checkpoint(sclnet_ckpt, "onnx", tmp_path / "empty", tmp_path / "o")
    with pytest.raises(ExportError, match="calibration folder does not exist"):
        export_checkpoint(sclnet_ckpt, "onnx", tmp_path / "nope", tmp_path / "o")
    with pytest.raises(ExportError, match="unknown target 'coreml'"):
        export_checkpoint(sclnet_ckpt, "coreml", tiny_dataset, tmp_path / "o")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt: not a loadable checkpoint"):
        export_checkpoint(tmp_path / "bad.pt", "onnx", tiny_dataset, tmp_path / "o")
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ExportError, match="broken.jpg: cannot decode image"):
        export_checkpoint(sclnet_ckpt, "onnx", tmp_path / "unreadable", tmp_path / "o")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_collapsed_model_is_refused_and_reference_spread_recorded(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model("sclnet_test", num_classes=6).eval()
    with torch.no_grad():  # the embedding conv ignores its input: every image gets the same embedding
        model.head.embed[0].weight.zero_()
        model.head.embed[1].bias.fill_(1.0)
    ckpt = save_checkpoint(tmp_path / "collapsed.pt", model)
    with pytest.raises(ExportError, match="collapsed.pt: the float model gives all .* the same embedding"):
        export_checkpoint(ckpt, "onnx", tiny_dataset, tmp_path / "o")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_cli_export_onnx_and_errors(sclnet_ckpt, tiny_dataset, tmp_path):
    r = runner.invoke(
        app, ["export", str(sclnet_ckpt), "--target", "onnx", "--calib", str(tiny_dataset), "-o", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sclnet_test.onnx").is_file() and (tmp_path / "sclnet_test.onnx.json").is_file()
    spread = read_sidecar(tmp_path / "sclnet_test.onnx")["verification"]["reference_pairwise_cosine_mean"]
    assert -1.0 <= spread < 0.9999
    r = runner.invoke(
        app, ["export", str(sclnet_ckpt), "--target", "tensorrt", "--calib", str(tiny_dataset), "-o", str(tmp_path)]
    )
    assert r.exit_code == 2 and "unknown target 'tensorrt'" in r.output


def test_cli_export_fails_when_below_drift_budget(sclnet_ckpt, tiny_dataset, tmp_path):
    recipe = tmp_path / "strict.toml"
    recipe.write_text(
        'target = "executorch"\nvariants = ["int8"]\n[verify]\nmin_cosine = 1.0\n'
    )  # int8 never reaches 1.0
    r = runner.invoke(
        app,
        [
            "export",
            str(sclnet_ckpt),
            "--target",
            "executorch",
            "--int8",
            "--calib",
            str(tiny_dataset),
            "--recipe",
            str(recipe),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 1 and "missed the recipe's drift budget" in r.output
    assert read_sidecar(tmp_path / "o" / "sclnet_test_xnnpack_int8.pte")["verification"]["passed"] is False


@pytest.mark.slow
def test_vit_executorch_static_int8_quantizes_linears_and_keeps_fc2_dynamic(tiny_dataset, tmp_path):
    """The ViT recipe's static int8 variant: static int8 linears (their quantize nodes hold calibrated scales), fc2
    dynamic, measured in the ExecuTorch runtime like every artifact; precision names it apart from the dynamic one."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", gelu="tanh").eval())
    recipe = tmp_path / "r.toml"
    recipe.write_text('target = "executorch"\nvariants = ["int8"]\n[verify]\nmin_cosine = 0.9\n')
    r = export_checkpoint(ckpt, "executorch", tiny_dataset, tmp_path / "o", int8=True, recipe_path=recipe)[0]
    assert r["precision"] == "int8" and r["artifact"].name == "vit_xnnpack_int8.pte"
    assert r["verification"]["passed"]
    ops = r["delegation"][
        "ops"
    ]  # static scales (quantize_per_tensor.default) and run-time ones (choose_qparams) for fc2
    assert (
        "quantized_decomposed_quantize_per_tensor_default" in ops
        and "quantized_decomposed_choose_qparams_tensor" in ops
    )
    meta = read_sidecar(r["artifact"])
    assert meta["recipe"]["int8_static"]["dynamic_modules"] == ["mlp\\.fc2$"]
    recipe.write_text(
        'target = "executorch"\nvariants = ["int8"]\n[int8_static]\ndynamic_modules = ["no_such_layer"]\n'
    )
    with pytest.raises(ExportError, match="dynamic_modules .* no linear layer of the model matches"):
        export_checkpoint(ckpt, "executorch", tiny_dataset, tmp_path / "o2", int8=True, recipe_path=recipe)


def test_static_recipe_values_are_checked(sclnet_ckpt, tiny_dataset, tmp_path):
    recipe = tmp_path / "r.toml"
    for body, message in (
        ('[int8_static]\nops = "linear"\n', "int8_static.ops must be a list of names"),
        ("[int8]\nsmooth_alpha = 2.0\n", r"int8.smooth_alpha must be a number in \(0, 1\]"),
        ('[int8_static]\ndynamic_modules = ["(unclosed"]\n', "is not a regular expression"),
        (
            'variants = ["int16x8"]\n',
            "variant int16x8 asks for int16 activations, but ExecuTorch's XNNPACK backend has no int16 kernels",
        ),
    ):
        recipe.write_text('target = "executorch"\n' + body)
        with pytest.raises(ExportError, match=message):
            export_checkpoint(sclnet_ckpt, "executorch", tiny_dataset, tmp_path / "o", int8=True, recipe_path=recipe)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_smoothquant_migration_keeps_the_float_model():
    """Scale migration (export/smoothing.py) changes LayerNorm and linear weights, not what the model computes."""
    from mobilereid.export.smoothing import smooth_layernorm_outputs

    torch.manual_seed(0)
    model = build_model("vit_test", gelu="tanh", keep_ratio=0.75).eval()
    images = torch.randn(6, 3, *model.cfg.img_size).numpy()
    smoothed = smooth_layernorm_outputs(model, images, 0.5)
    x = torch.from_numpy(images)
    with torch.no_grad():
        assert torch.allclose(smoothed(x), model(x), atol=1e-4, rtol=1e-4)
    assert not torch.equal(smoothed.blocks[0].norm1.weight, model.blocks[0].norm1.weight)
    with pytest.raises(ExportError, match="ViT models only"):
        smooth_layernorm_outputs(build_model("sclnet_test"), images, 0.5)


@pytest.mark.parametrize("preset", ["sclnet_test", "vit_test"])
def test_standalone_batchnorms_become_affine_with_the_same_outputs(preset):
    """pt2e_batchnorm.py: after calibration every BatchNorm left (SCL-net's fuse BN, the BN-neck) is a multiply and
    an add; the calibrated graph computes the same embeddings, so convert_pt2e has no BatchNorm to search."""
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from mobilereid.export.pt2e_batchnorm import batchnorms_as_affine

    torch.manual_seed(0)
    model = build_model(preset, num_classes=4).eval()
    for m in model.modules():  # running statistics away from the 0/1 defaults, so the rewrite has numbers to get wrong
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            (
                m.running_mean.uniform_(-1, 1),
                m.running_var.uniform_(0.5, 2),
                m.weight.data.uniform_(0.5, 2),
                m.bias.data.uniform_(-1, 1),
            )
    x = torch.randn(4, 3, *model.cfg.img_size)
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (x[:1],)).module(), quantizer)
    with torch.no_grad():
        for image in x:
            prepared(image[None])
        before = torch.cat([prepared(image[None]) for image in x])
        rewritten = copy.deepcopy(prepared)
        count = batchnorms_as_affine(rewritten)
        after = torch.cat([rewritten(image[None]) for image in x])
    standalone = {"sclnet_test": 4, "vit_test": 1}[preset]  # 3 fuse BNs + BN-neck; the ViT's BN-neck
    assert count == standalone
    assert not [n for n in rewritten.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)
