"""`mobilereid inspect` on the shared sclnet_test exports: real ETDump profiles of .pte programs, one-op LiteRT
timings, and every int8 op output (LiteRT by tensor name, ExecuTorch by torch call through a one-op-per-partition
rebuild) matched to the float model's tensors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import MobileReIDError
from mobilereid.inspection.run import inspect_artifact


def _artifact(exports, target: str, precision: str):
    return next(r["artifact"] for r in exports[1] if r["target"] == target and r["precision"] == precision)


def test_int8_tflite_every_op_timed_and_matched_to_the_float_model(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path):
    art = _artifact(sclnet_exports, "tflite", "int8")
    report = inspect_artifact(art, sclnet_ckpt, tiny_dataset, images=2, runs=5)
    t, n = report["time"], report["numerics"]
    assert len(t["rows"]) == len({r["index"] for r in t["rows"]}) > 10  # one row per op of the graph
    assert all(r["ms"] >= 0 for r in t["rows"]) and t["e2e_ms"] > 0
    assert n["available"] and n["matched_fraction"] >= 0.9
    final = max(n["rows"], key=lambda r: r["position"])  # the embedding: int8 close to float, not equal
    assert 0.9 < final["cosine"] < 1.0 and final["max_error_lsb"] > 0
    assert all(r["sqnr_db"] > 0 for r in n["rows"])
    # Model Explorer node data: keyed by the graph's output tensor names, a gradient from 0 to 1
    from mobilereid.inspection.litert_ops import op_table
    from mobilereid.inspection.report import write

    write(report, tmp_path / "o")
    names = {o for op in op_table(art) for o in op["outputs"]}
    for f in ("model_explorer_time.json", "model_explorer_sqnr.json"):
        graph = json.loads((tmp_path / "o" / f).read_text())["main"]
        assert graph["results"] and set(graph["results"]) <= names
        assert {g["stop"] for g in graph["gradient"]} == {0, 1}


def test_fp32_tflite_matches_its_float_model_exactly_enough(sclnet_ckpt, sclnet_exports, tiny_dataset):
    report = inspect_artifact(_artifact(sclnet_exports, "tflite", "fp32"), sclnet_ckpt, tiny_dataset, images=1, runs=5)
    rows = report["numerics"]["rows"]
    assert report["numerics"]["matched_fraction"] == 1.0
    assert min(r["sqnr_db"] for r in rows) > 60  # the same graph and kernels: rounding only


def test_pte_profile_accounts_for_the_delegate_and_the_kernels(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path):
    art = _artifact(sclnet_exports, "executorch", "int8")
    result = CliRunner().invoke(
        app,
        [
            "inspect",
            str(art),
            "--reference",
            str(sclnet_ckpt),
            "-d",
            str(tiny_dataset),
            "-o",
            str(tmp_path / "i"),
            "--runs",
            "10",
            "--images",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "i" / "report.json").read_text())
    t = report["time"]
    delegates = [r for r in t["rows"] if r["kind"] == "delegate"]
    assert delegates and all(r["inner"] for r in delegates)  # XNNPACK's own per-op events inside each call
    assert any("GEMM" in op["name"] or "Convolution" in op["name"] for r in delegates for op in r["inner"])
    assert 0.5 < t["sum_over_e2e"] < 1.5
    # numerics: the program rebuilt one op per partition, bit-identical to the artifact (calibration on one thread),
    # every op output matched to the float model's tensor of the same torch call, with its module path
    n = report["numerics"]
    assert n["available"] and n["rebuild"]["bit_identical"], n.get("rebuild", n)
    assert n["matched_fraction"] >= 0.9 and n["conversions"] > 0  # the lone quantize/dequantize partitions
    assert any(r["op"].startswith("convolution") and r["name"].split(" (")[0] for r in n["rows"])
    quantized = [r for r in n["rows"] if "max_error_lsb" in r]
    assert quantized and all(r["max_error_lsb"] > 0 for r in quantized)  # int8 outputs, dequantized with their scale
    final = max(n["rows"], key=lambda r: r["position"])
    assert 0.9 < final["cosine"] < 1.0
    for name in ("report.md", "report.html", "ops.png"):
        assert (tmp_path / "i" / name).stat().st_size > 0
    assert not (tmp_path / "i" / "model_explorer_time.json").exists()  # no Model Explorer adapter for .pte


def test_bad_inputs_are_one_line_errors(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path):
    onnx = _artifact(sclnet_exports, "onnx", "fp32")
    with pytest.raises(MobileReIDError, match="inspect reads ExecuTorch"):
        inspect_artifact(onnx, sclnet_ckpt, tiny_dataset)
    lone = tmp_path / "model.tflite"
    shutil.copyfile(_artifact(sclnet_exports, "tflite", "int8"), lone)
    with pytest.raises(MobileReIDError, match="no metadata sidecar"):
        inspect_artifact(lone, sclnet_ckpt, tiny_dataset)
    other = tmp_path / "other.pt"
    from mobilereid.models import build_model
    from mobilereid.models.checkpoint import save_checkpoint

    save_checkpoint(other, build_model("sclnet_test", num_classes=6).eval())
    with pytest.raises(MobileReIDError, match="another checkpoint than --reference"):
        inspect_artifact(_artifact(sclnet_exports, "tflite", "int8"), other, tiny_dataset)


def test_evaluate_inspect_adds_per_op_sections(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path):
    arts = [_artifact(sclnet_exports, "tflite", "int8")]  # the .pte's rows are checked above; this is the section
    args = ["evaluate", *map(str, arts), "-d", str(tiny_dataset), "-o", str(tmp_path / "e"), "--inspect"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "pass --reference" in refused.output
    result = CliRunner().invoke(app, [*args, "--reference", str(sclnet_ckpt)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "e" / "report.md").read_text()
    section = md[md.index("## Per-op inspection") :]
    assert all(f"`{a.name}`" in section for a in arts) and "op outputs matched" in section
    rows = json.loads((tmp_path / "e" / "report.json").read_text())["artifacts"]
    assert all(r["inspect"]["time"]["rows"] for r in rows)
