"""OSNet and fast-reid ResNets as native families: trained here, exported and verified in their runtimes (the INT8
TFLite model that LiteRT's XNNPACK refused before: padded max pool, dead channel-gate unit), and the ONNX rewrite
that makes the padded pool INT8-friendly checked against onnxruntime."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torch import nn

from mobilereid.export import export_checkpoint
from mobilereid.export.tflite.onnx_rewrites import zero_pad_relu_maxpools
from mobilereid.models import build_model
from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint
from mobilereid.train import TrainConfig, train


@pytest.mark.parametrize("padding,ceil", [(1, False), (0, True), (1, True)])
def test_zero_padded_maxpool_rewrite_is_exact_in_onnxruntime(padding, ceil):
    import onnx
    import onnxruntime as ort

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding, ceil_mode=ceil)).eval()
    for h, w in [(32, 16), (33, 17)]:
        x = torch.randn(1, 3, h, w)
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False)
        graph = onnx.load_from_string(buf.getvalue())
        assert zero_pad_relu_maxpools(graph) == 1
        assert [n.op_type for n in graph.graph.node][-2:] == ["Pad", "MaxPool"]
        y = ort.InferenceSession(graph.SerializeToString()).run(None, {graph.graph.input[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert y.shape == expected.shape and np.abs(y - expected).max() < 1e-5


def test_maxpool_without_relu_is_left_alone():
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(nn.MaxPool2d(3, 2, 1).eval(), (torch.randn(1, 3, 16, 8),), buf, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue())
    assert zero_pad_relu_maxpools(graph) == 0  # negative inputs: -inf padding is needed


@pytest.fixture(scope="module")
def osnet_ckpt(tiny_dataset, tmp_path_factory):
    """A trained OSNet-IBN (InstanceNorm in the stem and after the stage-2 add, BatchNorm everywhere else): one
    model covers both normalisations (the plain-BN OSNet exports in tests/test_residual_fold.py and test_export)."""
    out = tmp_path_factory.mktemp("osnet")
    cfg = TrainConfig(model="osnet_ibn_test", epochs=2, p=4, k=2, lr=1e-3, threads=1, seed=0)
    summary = train(cfg, tiny_dataset, out)
    assert np.isfinite(summary["history"][-1]["loss"])
    return out / "model.pt"


def test_osnet_trains_and_every_int8_target_verifies(osnet_ckpt, tiny_dataset, tmp_path):
    model, state = load_checkpoint(osnet_ckpt)
    assert state["family"] == "osnet" and state["preset"] == "osnet_ibn_test" and state["config"]["norm"] == "ibn"
    (tmp_path / "et.toml").write_text('target = "executorch"\nvariants = ["int8"]\n')  # fp32: tests/test_export.py
    results = export_checkpoint(
        osnet_ckpt,
        "executorch,tflite,tflm",
        tiny_dataset,
        tmp_path,
        int8=True,
        threads=1,
        recipe_path=tmp_path / "et.toml",
    )
    got = {(r["target"], r["precision"]): r for r in results}
    for key in [("executorch", "int8"), ("tflite", "int8"), ("tflite", "dynamic"), ("tflm", "int8")]:
        v = got[key]["verification"]
        assert v["passed"] and v["cosine_mean"] >= 0.99, (key, v)
    sidecar = json.loads((tmp_path / "model_int8.tflite.json").read_text())
    assert sidecar["model"]["family"] == "osnet" and sidecar["model"]["preset"] == "osnet_ibn_test"


def test_osnet_ain_full_integer_tflite_verifies(tiny_dataset, tmp_path):
    """OSNet-AIN's InstanceNorm inside the residual branch, in full-integer TFLite (onnx2tf decomposes it into
    means and a reciprocal square root): verified in LiteRT like any other model."""
    torch.manual_seed(0)
    model = build_model("osnet_test", num_classes=6, norm="ain", layers=(2, 2, 2)).eval()
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.conv2.modules())
    ckpt = save_checkpoint(tmp_path / "ain.pt", model)
    (tmp_path / "int8.toml").write_text('target = "tflite"\nvariants = ["int8"]\n')
    results = export_checkpoint(
        ckpt, "tflite", tiny_dataset, tmp_path / "out", int8=True, threads=1, recipe_path=tmp_path / "int8.toml"
    )
    assert [r["precision"] for r in results] == ["int8"]
    assert results[0]["verification"]["passed"] and results[0]["verification"]["cosine_mean"] >= 0.99


def test_bot_resnet_exports_int8_tflite(tiny_dataset, tmp_path):
    """fast-reid's BoT layout (BNNeck on the pooled vector, non-local blocks) through onnx2tf: the forms it
    mis-converted (BatchNorm2d on a 1x1 map, the non-local block's reshapes) are gone."""
    model = build_model("resnet_test", pooling="avg").eval()
    ckpt = save_checkpoint(tmp_path / "bot.pt", model)
    results = export_checkpoint(ckpt, "tflite", tiny_dataset, tmp_path / "out", int8=True, threads=1)
    int8 = next(r for r in results if r["precision"] == "int8")
    assert int8["verification"]["passed"] and int8["verification"]["cosine_mean"] >= 0.99
