"""report.html as a person opens it: headless Chromium loads the file from disk with the network off, runs its script,
takes a screenshot, and the page holds the tables (sortable) and the embedded plots, with no console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from mobilereid.report import write_eval_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _report() -> dict:
    """An evaluation report as evaluate_artifacts builds it (two artifacts, a reference, latency)."""
    cmc = [0.5 + 0.02 * i for i in range(20)]
    metrics = {"rank1": 0.5, "rank5": 0.7, "rank10": 0.8, "mAP": 0.41, "mINP": 0.2, "cmc": cmc}
    artifacts = []
    for i, (name, runtime, precision, ms) in enumerate(
        [("m.onnx", "onnxruntime", "fp32", 12.5), ("m_int8.tflite", "litert", "int8", 3.25)]
    ):
        artifacts.append(
            {
                "name": name,
                "runtime": runtime,
                "precision": precision,
                "verification": "passed",
                "size_mb": 4.0 / (i + 1),
                "metrics": {**metrics, "mAP": 0.41 - 0.01 * i},
                "latency": {"p50_ms": ms, "p90_ms": ms * 1.1, "p99_ms": ms * 1.2, "throughput_per_s": 1000 / ms},
                "delta_mAP": -0.01 * i,
                "drift": {"cosine_mean": 1 - 0.01 * i, "top1_agreement": 1 - 0.05 * i},
            }
        )
    return {
        "data": "synth",
        "device": "local",
        "threads": 2,
        "reference": {"checkpoint": "model.pt", "metrics": metrics},
        "artifacts": artifacts,
    }


def test_report_html_is_self_contained(tmp_path):
    out = write_eval_report(_report(), tmp_path / "r")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # cmc.png and accuracy_latency.png
    assert "<table>" in page and "m_int8.tflite" in page
    # nothing is fetched from anywhere: no http(s) URL in a src/href, no external script or stylesheet
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert json.loads((out / "report.json").read_text())["plots"] == ["cmc.png", "accuracy_latency.png"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test-deps installs Debian's when run as root)")
def test_report_html_in_a_headless_browser(tmp_path):
    out = write_eval_report(_report(), tmp_path / "r")
    page = (out / "report.html").resolve()
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'p'}",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ]  # any network request would fail
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        base + ["--enable-logging=stderr", "--v=0", "--window-size=1400,1000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="1"' in dom  # the script ran to its end
    assert dom.count("data-sortable") >= 1 and dom.count("<img") == 2
    assert "m_int8.tflite" in dom and "CMC" not in dom.split("<body")[0]
