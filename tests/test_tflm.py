"""Microcontroller target: a tiny SCL-net through TFLite Micro, its C sources compiled, fit and no-fit."""

import shutil
import subprocess

import pytest
import torch

from mobilereid.errors import ExportError
from mobilereid.export import export_checkpoint
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint
from mobilereid.runtimes import read_sidecar


@pytest.fixture(scope="module")
def tflm_export(tiny_dataset, tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tflm")
    ckpt = save_checkpoint(root / "mcu.pt", build_model("sclnet_test", num_classes=6).eval())
    results = export_checkpoint(ckpt, "tflm", tiny_dataset, root / "out", int8=True, board="cortex-m4")
    return root, ckpt, results[0]


@pytest.mark.slow
def test_tflm_runs_in_real_interpreter_and_matches_litert(tflm_export):
    root, ckpt, r = tflm_export
    t = r["tflm"]
    assert r["verification"]["runtime"] == "tflite-micro" and r["verification"]["passed"]
    assert t["max_output_lsb_vs_litert_reference_kernels"] <= 1  # same reference maths as LiteRT's BUILTIN_REF
    assert t["max_output_lsb_vs_litert"] <= 8  # LiteRT's XNNPACK int8 kernels round differently
    assert 0 < t["arena_bytes"] < 4 << 20 and t["arena_bytes"] % 1024 == 0
    assert t["flash_bytes"] == r["artifact"].stat().st_size
    from mobilereid.export.tflm.target import TFLM_OPS

    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= set(t["ops"]) <= TFLM_OPS
    meta = read_sidecar(r["artifact"])
    assert meta["tflm"]["arena_bytes"] == t["arena_bytes"] and meta["input"]["dtype"] == "int8"
    # the model describes itself (flatbuffer metadata, so also inside the generated C array), as the sidecar does
    from mobilereid.export.tflite.metadata import read_metadata

    embedded = read_metadata(r["artifact"])
    assert (
        embedded["target"] == "tflm"
        and embedded["input"] == meta["input"]
        and embedded["preprocess"] == meta["preprocess"]
    )
    # the arena breakdown: TFLM's planned head holds at least the analysed peak of live tensors, head + tail = arena use
    arena = t["arena"]
    assert arena["peak"]["peak_bytes"] <= arena["measured"]["planned_head_bytes"]
    assert arena["measured"]["planned_head_bytes"] + arena["measured"]["persistent_tail_bytes"] <= t["arena_bytes"]
    assert arena["peak"]["live"] and all(row["bytes"] > 0 for row in arena["peak"]["live"])
    order = t["operator_order"]
    assert order["arena_bytes"] == t["arena_bytes"]
    assert not order["reordered"] or order["arena_bytes_converter_order"] >= t["arena_bytes"]
    plan = t["offline_plan"]
    assert not plan["planned"] or plan["arena_bytes_without_plan"] >= t["arena_bytes"]
    assert "estimate, not measured" in t["mcu_latency_estimate"]["note"]


@pytest.mark.slow
def test_arena_is_minimal(tflm_export):
    from mobilereid.export.tflm.target import _runs

    root, ckpt, r = tflm_export
    arena = r["tflm"]["arena_bytes"]
    assert _runs(r["artifact"], arena) and not _runs(r["artifact"], arena - 1024)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_generated_sources_compile(tflm_export, tmp_path):
    root, ckpt, r = tflm_export
    out = r["artifact"].parent
    main = tmp_path / "main.cc"
    main.write_text(
        '#include "mcu_model_data.h"\n#include <cstdio>\n'
        'int main() { std::printf("%u %zu %d\\n", mcu_model_data_len, mcu_arena_size, mcu_input_dims[1]);\n'
        "  return (reinterpret_cast<uintptr_t>(mcu_model_data) % 16) != 0; }\n"
    )
    exe = tmp_path / "probe"
    subprocess.run(
        ["g++", "-std=c++17", "-I", str(out), str(main), str(out / "mcu_model_data.cc"), "-o", str(exe)], check=True
    )
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert (
        int(printed[0]) == r["tflm"]["flash_bytes"]
        and int(printed[1]) == r["tflm"]["arena_bytes"]
        and int(printed[2]) == 64
    )


@pytest.mark.slow
def test_no_fit_says_by_how_much(tflm_export, tiny_dataset, tmp_path):
    root, ckpt, r = tflm_export
    board = tmp_path / "tiny_board.toml"
    board.write_text("[postage-stamp]\nflash_kb = 64\nram_kb = 16\n")
    with pytest.raises(
        ExportError, match=r"does not fit board postage-stamp: model needs \d+ KB flash.*short by \d+ KB.*arena needs"
    ):
        export_checkpoint(ckpt, "tflm", tiny_dataset, tmp_path / "o", int8=True, board=str(board))
    assert not list((tmp_path / "o").glob("*.tflite"))


def test_board_and_target_errors(tiny_dataset, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    with pytest.raises(ExportError, match="full-integer models only"):
        export_checkpoint(ckpt, "tflm", tiny_dataset, tmp_path / "o")
    from mobilereid.export.tflm.target import load_board

    with pytest.raises(ExportError, match="unknown board 'pdp11'"):
        load_board("pdp11")
    assert load_board("esp32-s3")["ram_kb"] == 512


def test_unsupported_op_is_named():
    import tensorflow as tf

    from mobilereid.export.tflm.target import check_ops

    class Gelu(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.nn.gelu(x, approximate=False)

    m = Gelu()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    data = conv.convert()
    with pytest.raises(ExportError, match="TFLite Micro has no kernel for GELU"):
        check_ops(data, "gelu_model")


@pytest.mark.slow
def test_slim_and_reordered_artifact_is_smaller_and_bit_identical(tflm_export):
    """The artifact is the slimmed, reordered model: smaller than the converter's file, the same outputs in TFLM as
    the full model (checked here again, independently of the exporter), refused by LiteRT (zero points cut)."""
    import numpy as np
    from tflite_micro.python.tflite_micro import runtime

    from mobilereid.export.tflite.size import size_breakdown
    from mobilereid.export.tflm.memory import reorder_for_memory
    from mobilereid.export.tflm.slim import slim_for_micro

    root, ckpt, r = tflm_export
    t = r["tflm"]
    s = t["slim"]
    plan = t["offline_plan"]
    assert plan["planned"] and plan["inplace_adds"] > 0  # SC-units sum their fuse convolutions
    assert t["slim_outputs_identical"] and s["bytes_after"] + plan["flash_bytes_added"] == t["flash_bytes"]
    assert t["flash_bytes"] < s["bytes_before"]
    assert s["zero_point_entries"] > 0 and s["bias_quantization_entries"] > 0
    assert size_breakdown(r["artifact"].read_bytes())["quantization_parameter_bytes"] < 0.5 * s["bytes_before"]
    slim = r["artifact"].read_bytes()
    # slimming is idempotent: nothing left to drop
    again, rec = slim_for_micro(slim)
    assert rec["zero_point_entries"] == rec["bias_quantization_entries"] == rec["unused_buffers"] == 0
    # reordering an already reordered model finds nothing better (counting in-place ADDs, as the export did)
    assert reorder_for_memory(slim, inplace_add=True)[1]["reordered"] is False
    # the slim model against a TFLM run of the same model with every zero point restored (the full quantization)
    from tensorflow.lite.tools import flatbuffer_utils

    full = flatbuffer_utils.read_model_from_bytearray(bytearray(slim))
    for tensor in full.subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.scale is not None and q.zeroPoint is not None and len(q.zeroPoint) < len(q.scale):
            q.zeroPoint = [int(q.zeroPoint[0])] * len(q.scale)
    full_bytes = bytes(flatbuffer_utils.convert_object_to_bytearray(full))
    a = runtime.Interpreter.from_bytes(slim, arena_size=t["arena_bytes"])
    b = runtime.Interpreter.from_bytes(full_bytes, arena_size=t["arena_bytes"] + (64 << 10))
    rng = np.random.default_rng(0)
    shape = a.get_input_details(0)["shape"]
    for _ in range(3):
        x = rng.integers(-128, 128, shape).astype(np.int8)
        a.set_input(x, 0)
        a.invoke()
        b.set_input(x, 0)
        b.invoke()
        assert np.array_equal(a.get_output(0), b.get_output(0))
    from mobilereid.runtimes import litert_interpreter_class

    with pytest.raises((ValueError, RuntimeError)):
        litert_interpreter_class()(model_content=slim).allocate_tensors()


def test_slim_keeps_nonzero_zero_points_and_reorder_keeps_dependencies():
    """A per-channel zero-point array with a non-zero entry is kept whole; the least-peak order runs every
    operator after the operators it reads from, and the live-memory analysis matches TFLM's planner on a branchy
    graph (two branches whose outputs meet in an add)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    from mobilereid.export.tflm.memory import _Graph, peak_breakdown, reorder_for_memory
    from mobilereid.export.tflm.slim import slim_for_micro

    class Branchy(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.w = [tf.constant(rng.normal(size=(1, 1, 8, 32)).astype(np.float32)) for _ in range(3)]

        @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 8], tf.float32)])
        def __call__(self, x):
            parts = [tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME")) for w in self.w]
            return tf.reduce_mean(parts[0] + parts[1] + parts[2], axis=[1, 2])

    data = _full_integer(Branchy(), (1, 16, 16, 8))
    reordered, rec = reorder_for_memory(data)
    g = _Graph(reordered)
    assert all(d < k for k in range(g.n_ops) for d in g.deps[k])  # every producer runs before its readers
    assert rec["peak_bytes_after"] <= rec["peak_bytes_before"] == peak_breakdown(data)["peak_bytes"]

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    per_channel = [
        t
        for t in model.subgraphs[0].tensors
        if t.quantization is not None
        and t.quantization.scale is not None
        and len(t.quantization.scale) > 1
        and t.type == 9
    ]  # INT8 weights
    assert per_channel
    per_channel[0].quantization.zeroPoint = [0] * (len(per_channel[0].quantization.scale) - 1) + [1]
    tampered = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    slim = flatbuffer_utils.read_model_from_bytearray(bytearray(slim_for_micro(tampered)[0]))
    kept = [
        t
        for t in slim.subgraphs[0].tensors
        if t.quantization is not None and t.quantization.zeroPoint is not None and len(t.quantization.zeroPoint) > 1
    ]
    assert len(kept) == 1 and list(kept[0].quantization.zeroPoint)[-1] == 1


def _residual_int8_model() -> bytes:
    """A full-integer model with two residual ADDs (a 1x1 projection, then twice a bottleneck conv-relu-conv added
    back, so that each ADD, holding its two inputs and its sum, is where live memory peaks)."""
    import numpy as np
    import tensorflow as tf

    class Residual(tf.Module):
        def __init__(self):
            rng = np.random.default_rng(1)
            shapes = [(3, 3, 16, 4), (3, 3, 4, 16)] * 2
            self.w = [tf.constant(rng.normal(size=shape).astype(np.float32) * 0.2) for shape in shapes]
            self.proj = tf.constant(rng.normal(size=(1, 1, 8, 16)).astype(np.float32) * 0.3)

        @tf.function(input_signature=[tf.TensorSpec([1, 24, 16, 8], tf.float32)])
        def __call__(self, x):
            y = tf.nn.conv2d(x, self.proj, 1, "SAME")
            for i in (0, 2):
                branch = tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(y, self.w[i], 1, "SAME")), self.w[i + 1], 1, "SAME")
                y = tf.nn.relu(y + branch)
            return tf.reduce_mean(y, axis=[1, 2])

    return _full_integer(Residual(), (1, 24, 16, 8))


def _full_integer(module, input_shape: tuple) -> bytes:
    """A tf.Module converted to a full-integer int8 .tflite, calibrated on 8 random inputs."""
    import numpy as np
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: (
        [np.random.default_rng(i).normal(size=input_shape).astype(np.float32)] for i in range(8)
    )
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def test_offline_plan_writes_adds_in_place_with_the_same_outputs(tmp_path):
    """The offline arena plan: each ADD that is the last reader of a same-shape input shares its memory, no two
    tensors live at the same time overlap in the arena otherwise, TFLite Micro follows the plan (a smaller measured
    arena) and gives bit-identical outputs to its own plan."""
    import struct

    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils
    from tflite_micro.python.tflite_micro import runtime

    from mobilereid.export.tflm.memory import _Graph
    from mobilereid.export.tflm.offline_plan import METADATA_NAME, _lifetimes, plan_offline
    from mobilereid.export.tflm.target import find_arena

    data = _residual_int8_model()
    planned, rec = plan_offline(data)
    assert rec["planned"] and rec["inplace_adds"] == 2
    assert rec["planned_bytes"] < rec["peak_bytes_without_inplace"]
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(planned))
    (entry,) = [m for m in model.metadata if m.name in (METADATA_NAME, METADATA_NAME.encode())]
    words = bytes(model.buffers[entry.buffer].data)
    version, subgraphs, n, *offsets = struct.unpack(f"<{len(words) // 4}i", words)
    g = _Graph(data)
    assert (version, subgraphs, n) == (0, 1, len(g.subgraph.tensors))
    first, last = _lifetimes(g)
    adds = {(g.writes[k][0], t) for k in range(g.n_ops) if g.ops[k] == "ADD" for t in g.reads[k]}
    arena_tensors = sorted(first)
    assert all(offsets[t] >= 0 for t in arena_tensors) and all(offsets[t] == -1 for t in range(n) if t not in first)
    for i, a in enumerate(arena_tensors):
        for b in arena_tensors[i + 1 :]:
            same_time = first[a] <= last[b] and first[b] <= last[a]
            same_memory = offsets[a] < offsets[b] + g.bytes[b] and offsets[b] < offsets[a] + g.bytes[a]
            if same_time and same_memory:  # only an ADD's output over the input it is the last reader of
                assert offsets[a] == offsets[b] and ((a, b) in adds or (b, a) in adds)
    paths = {name: tmp_path / f"{name}.tflite" for name in ("tflm_plan", "offline_plan")}
    paths["tflm_plan"].write_bytes(data)
    paths["offline_plan"].write_bytes(planned)
    arenas = {name: find_arena(path) for name, path in paths.items()}
    assert arenas["offline_plan"] < arenas["tflm_plan"]
    own = runtime.Interpreter.from_bytes(data, arena_size=arenas["tflm_plan"])
    ours = runtime.Interpreter.from_bytes(planned, arena_size=arenas["offline_plan"])
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(-128, 128, (1, 24, 16, 8)).astype(np.int8)
        own.set_input(x, 0)
        own.invoke()
        ours.set_input(x, 0)
        ours.invoke()
        assert np.array_equal(own.get_output(0), ours.get_output(0))


def test_board_profiles_carry_estimate_assumptions():
    from mobilereid.export.tflm.target import load_board, mcu_latency_estimate

    for name in ("cortex-m7", "stm32h7", "cortex-m4", "nrf52840", "esp32-s3"):
        board = load_board(name)
        est = mcu_latency_estimate(board, 10_000_000)
        assert est["ms"] == pytest.approx(1e7 / (board["int8_macs_per_cycle"] * board["clock_mhz"] * 1e6) * 1e3)
        assert "estimate, not measured" in est["note"]
    assert load_board("nrf52840")["ram_kb"] == 256 and load_board("stm32h7")["clock_mhz"] == 480
    assert mcu_latency_estimate({"name": "own", "flash_kb": 1, "ram_kb": 1}, 1000) is None
