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
    from mobilereid.export.tflm_target import TFLM_OPS

    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= set(t["ops"]) <= TFLM_OPS
    meta = read_sidecar(r["artifact"])
    assert meta["tflm"]["arena_bytes"] == t["arena_bytes"] and meta["input"]["dtype"] == "int8"
    # the model describes itself (flatbuffer metadata, so also inside the generated C array), as the sidecar does
    from mobilereid.export.tflite_metadata import read_metadata

    embedded = read_metadata(r["artifact"])
    assert embedded["target"] == "tflm" and embedded["input"] == meta["input"] and embedded["preprocess"] == meta["preprocess"]


@pytest.mark.slow
def test_arena_is_minimal(tflm_export):
    from mobilereid.export.tflm_target import _runs

    root, ckpt, r = tflm_export
    arena = r["tflm"]["arena_bytes"]
    assert _runs(r["artifact"], arena) and not _runs(r["artifact"], arena - 1024)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_generated_sources_compile(tflm_export, tmp_path):
    root, ckpt, r = tflm_export
    out = r["artifact"].parent
    main = tmp_path / "main.cc"
    main.write_text('#include "mcu_model_data.h"\n#include <cstdio>\n'
                    "int main() { std::printf(\"%u %zu %d\\n\", mcu_model_data_len, mcu_arena_size, mcu_input_dims[1]);\n"
                    "  return (reinterpret_cast<uintptr_t>(mcu_model_data) % 16) != 0; }\n")
    exe = tmp_path / "probe"
    subprocess.run(["g++", "-std=c++17", "-I", str(out), str(main), str(out / "mcu_model_data.cc"), "-o", str(exe)], check=True)
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert int(printed[0]) == r["tflm"]["flash_bytes"] and int(printed[1]) == r["tflm"]["arena_bytes"] and int(printed[2]) == 64


@pytest.mark.slow
def test_no_fit_says_by_how_much(tflm_export, tiny_dataset, tmp_path):
    root, ckpt, r = tflm_export
    board = tmp_path / "tiny_board.toml"
    board.write_text("[postage-stamp]\nflash_kb = 64\nram_kb = 16\n")
    with pytest.raises(ExportError, match=r"does not fit board postage-stamp: model needs \d+ KB flash.*short by \d+ KB.*arena needs"):
        export_checkpoint(ckpt, "tflm", tiny_dataset, tmp_path / "o", int8=True, board=str(board))
    assert not list((tmp_path / "o").glob("*.tflite"))


def test_board_and_target_errors(tiny_dataset, tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    with pytest.raises(ExportError, match="full-integer models only"):
        export_checkpoint(ckpt, "tflm", tiny_dataset, tmp_path / "o")
    from mobilereid.export.tflm_target import load_board

    with pytest.raises(ExportError, match="unknown board 'pdp11'"):
        load_board("pdp11")
    assert load_board("esp32-s3")["ram_kb"] == 512


def test_unsupported_op_is_named():
    from mobilereid.export.tflm_target import check_ops
    import tensorflow as tf

    class Gelu(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        def __call__(self, x):
            return tf.nn.gelu(x, approximate=False)

    m = Gelu()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    data = conv.convert()
    with pytest.raises(ExportError, match="TFLite Micro has no kernel for GELU"):
        check_ops(data, "gelu_model")
