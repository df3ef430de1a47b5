"""The Android demo's Kotlin core (android_demo/reid-core), compiled with the npm `kotlin-compiler` and tested with
Debian's JUnit 5 console launcher, against golden vectors that the Python reference writes from real exported
sidecars and real dataset images. `make test` installs both tools (see the Makefile's test-deps)."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from android_golden import write_golden

from mobilereid.evaluate import completed_summary
from mobilereid.export import export_checkpoint
from mobilereid.metrics import rank_summary
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "android_demo" / "reid-core"
KOTLINC = ROOT / "android_demo" / "tools" / "node_modules" / "kotlin-compiler" / "bin" / "kotlinc"
JAVA_LIB = Path("/usr/share/java")
JUNIT_CONSOLE = JAVA_LIB / "junit-platform-console-standalone.jar"


def _tools() -> None:
    missing = [str(p) for p in (KOTLINC, JUNIT_CONSOLE) if not p.exists()]
    if missing or not shutil.which("java"):
        pytest.fail(f"Kotlin/JUnit tools missing ({', '.join(missing) or 'java'}): run `make test-deps`")


def _kotlinc(sources: Path, out_jar: Path, classpath: list[Path]) -> None:
    cmd = [str(KOTLINC), str(sources), "-d", str(out_jar), "-jvm-target", "17"]
    if classpath:
        cmd += ["-cp", ":".join(str(p) for p in classpath)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    errors = [l for l in proc.stderr.splitlines() if "error:" in l]
    assert proc.returncode == 0 and not errors, f"kotlinc failed on {sources}:\n" + "\n".join(
        errors or proc.stderr.splitlines()[-20:]
    )


@pytest.fixture(scope="module")
def golden(tmp_path_factory, small_dataset) -> Path:
    """Golden vectors from real sidecars: ONNX (NCHW float32), TFLite int8 (NHWC int8) and a uint8-input variant."""
    tmp = tmp_path_factory.mktemp("android")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp / "sclnet_test.pt", build_model("sclnet_test", num_classes=6).eval())
    export_checkpoint(ckpt, "onnx", small_dataset, tmp / "export")
    recipe = tmp / "int8_only.toml"
    recipe.write_text(
        (ROOT / "mobilereid" / "recipes" / "tflite_sclnet.toml")
        .read_text()
        .replace('variants = ["fp32", "dynamic", "int8"]', 'variants = ["int8"]')
    )
    export_checkpoint(ckpt, "tflite", small_dataset, tmp / "export", int8=True, recipe_path=recipe)
    sidecars = sorted((tmp / "export").glob("*.json"))
    int8 = next(p for p in sidecars if p.name.endswith(".tflite.json"))
    meta = json.loads(int8.read_text())
    assert meta["input"]["dtype"] == "int8" and meta["input"]["layout"] == "NHWC"
    # uint8-input variant of the same artifact (what Edge TPU models take): same scale, zero point shifted by 128
    meta["artifact"] = meta["artifact"].replace(".tflite", "_uint8in.tflite")
    meta["input"]["dtype"] = "uint8"
    meta["input"]["quantization"]["zero_point"] += 128
    uint8 = tmp / "export" / (meta["artifact"] + ".json")
    uint8.write_text(json.dumps(meta))
    onnx = next(p for p in sidecars if p.name.endswith(".onnx.json"))
    # an NHWC float input at a size that is no power of two: resize weights that are not dyadic fractions, so the
    # float32 rounding of every bilinear step is exercised (64x32 from 256x128 is exact in any operation order)
    meta = json.loads(onnx.read_text())
    meta["artifact"] = meta["artifact"].replace(".onnx", "_100x44_nhwc.tflite")
    meta["preprocess"].update(height=100, width=44)
    meta["input"].update(shape=[1, 100, 44, 3], layout="NHWC")
    odd = tmp / "export" / (meta["artifact"] + ".json")
    odd.write_text(json.dumps(meta))
    return write_golden(tmp / "golden", small_dataset, [onnx, int8, uint8, odd])


@pytest.mark.slow
def test_kotlin_core_reproduces_python_golden_vectors(golden, tmp_path):
    _tools()
    build = tmp_path / "build"
    build.mkdir()
    core_jar, tests_jar = build / "reid-core.jar", build / "reid-core-tests.jar"
    _kotlinc(CORE / "src" / "main" / "kotlin", core_jar, [])
    _kotlinc(
        CORE / "src" / "test" / "kotlin",
        tests_jar,
        [core_jar] + [JAVA_LIB / j for j in ("junit-jupiter-api.jar", "apiguardian-api.jar", "opentest4j.jar")],
    )
    stdlib = KOTLINC.parents[1] / "lib" / "kotlin-stdlib.jar"
    out, reports = tmp_path / "kotlin_out", tmp_path / "reports"
    cmd = [
        "java",
        f"-Dmobilereid.golden={golden}",
        f"-Dmobilereid.kotlin_out={out}",
        "-jar",
        str(JUNIT_CONSOLE),
        "--class-path",
        ":".join(map(str, (core_jar, tests_jar, stdlib))),
        "--scan-class-path",
        "--reports-dir",
        str(reports),
        "--disable-banner",
        "--details=summary",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    suites = [ET.parse(p).getroot() for p in reports.glob("*.xml")]
    cases = [c for s in suites for c in s.iter("testcase")]
    failed = [
        c.get("name") + ": " + (f.get("message") or "")[:300]
        for c in cases
        for f in list(c)
        if f.tag in ("failure", "error")
    ]
    assert proc.returncode == 0 and not failed, "JUnit failures:\n" + "\n".join(
        failed or proc.stdout.splitlines()[-30:]
    )
    names = {c.get("name") for c in cases}
    assert len(cases) >= 14 and not [c for c in cases if c.find("skipped") is not None], names
    assert any("bit-identical" in n for n in names) and any("numpy" in n for n in names)
    assert any("int8 gallery" in n for n in names)  # the app's int8 template store against the host's int8 format
    assert any("pca gallery" in n for n in names)  # and its PCA store against the host's pcaK format
    assert any("binary gallery" in n for n in names)  # and its sign-bit store against the host's binary format

    # what the Kotlin evaluation writer stored, read back by numpy as the host does after `adb pull`
    want = json.loads((golden / "npz.json").read_text())
    npz = np.load(out / "results" / "model.tflite.npz")
    for key in ("query", "gallery"):
        assert npz[key].dtype == np.float32 and np.array_equal(npz[key], np.asarray(want[key], dtype=np.float32))
    assert np.array_equal(npz["latency_ms"], np.asarray(want["latency_ms"]))
    for key in ("q_pids", "g_pids", "q_camids", "g_camids"):
        assert npz[key].tolist() == want[key]
    summary = json.loads((out / "results" / "model.tflite.summary.json").read_text())
    assert summary["latency"]["p50_ms"] == pytest.approx(float(np.percentile(want["latency_ms"], 50)))
    assert summary["threads"] == 4 and summary["runtime"] == "litert"
    # the host scores the phone's embeddings itself (the app writes no metrics)
    scored = completed_summary(out / "results", "model.tflite")
    assert "metrics" not in summary and scored["metrics"] == rank_summary(
        npz["query"], npz["gallery"], want["q_pids"], want["g_pids"], want["q_camids"], want["g_camids"]
    )


def test_golden_vectors_are_exact_python_preprocessing(golden):
    """The golden files themselves: float bits decode to the reference tensor, quantized values are in range."""
    cases = json.loads((golden / "preprocess.json").read_text())["cases"]
    assert len(cases) == 12 and {c["crop"] is None for c in cases} == {True, False}
    for c in cases:
        meta = json.loads((golden / c["sidecar"]).read_text())
        x = np.asarray(c["expected_float_bits"], dtype=np.int32).view(np.float32)
        assert x.size == int(np.prod(meta["input"]["shape"])) and np.isfinite(x).all()
        if c["expected_quantized"] is not None:
            q = np.asarray(c["expected_quantized"])
            lo, hi = (-128, 127) if meta["input"]["dtype"] == "int8" else (0, 255)
            assert q.min() >= lo and q.max() <= hi and q.size == x.size
    gallery = json.loads((golden / "gallery.json").read_text())
    decisions = [p["identity"] for p in gallery["probes"]]
    assert None in decisions and len(set(decisions)) > 2
