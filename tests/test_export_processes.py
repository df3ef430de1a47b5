"""Exports in two processes side by side (export/second_process.py): the same artifacts as one process, errors and
signals reach both processes, nothing temporary is left behind."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mobilereid.errors import ExportError
from mobilereid.export import export_checkpoint, second_process
from mobilereid.export.second_process import SecondProcess, work_units
from mobilereid.runtimes import open_runner, read_sidecar

REPO = Path(__file__).resolve().parents[1]


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


def test_work_units_keep_the_tflite_family_together_and_put_the_longest_first():
    assert work_units(["onnx", "executorch", "tflite", "edgetpu"]) == [["executorch"], ["tflite", "edgetpu"], ["onnx"]]
    assert work_units(["tflm", "onnx"]) == [["tflm"], ["onnx"]]


def test_two_processes_give_the_same_artifacts_as_one(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path, monkeypatch):
    started = []

    class Recorded(SecondProcess):
        def __init__(self, targets, kwargs):
            started.append(targets)
            super().__init__(targets, kwargs)

    monkeypatch.setattr(second_process, "SecondProcess", Recorded)
    seen = []
    out = tmp_path / "two"
    results = export_checkpoint(
        sclnet_ckpt,
        "onnx,tflite",
        tiny_dataset,
        out,
        int8=True,
        core_free=True,
        on_result=lambda r: seen.append(r["artifact"].name),
    )
    assert started == [["tflite"]]  # the longest unit went to the second process, onnx stayed here
    one = {r["artifact"].name: r for r in sclnet_exports[1] if r["target"] in ("onnx", "tflite")}
    assert [r["artifact"].name for r in results] == list(one)  # the order of a one-process export
    assert sorted(seen) == sorted(one)
    x = np.random.default_rng(0).normal(size=(3, 3, 64, 32)).astype(np.float32)
    for r in results:
        ref = one[r["artifact"].name]
        # the float reference comes from torch with one thread there and two here: the same to float rounding
        assert r["verification"]["cosine_mean"] == pytest.approx(ref["verification"]["cosine_mean"], abs=1e-6), r[
            "artifact"
        ].name
        a, b = open_runner(r["artifact"]), open_runner(ref["artifact"])
        for i in range(len(x)):  # TFLite files carry converter counters in names; what they compute is identical
            np.testing.assert_array_equal(a.embed(x[i : i + 1]), b.embed(x[i : i + 1]))
        assert read_sidecar(r["artifact"])["verification"]["passed"] == ref["verification"]["passed"]
    assert hidden(out) == []


def test_an_error_in_the_second_process_is_one_line_naming_the_file(tmp_path, tiny_dataset):
    missing = tmp_path / "missing.pt"
    helper = SecondProcess(["onnx"], dict(checkpoint=missing, calib=tiny_dataset, out_dir=tmp_path / "o", int8=False))
    try:
        with pytest.raises(ExportError, match=f"{missing}") as info:
            helper.result()
        assert "\n" not in str(info.value)
    finally:
        helper.stop()


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def test_sigterm_stops_both_processes_and_leaves_no_temporary_files(tmp_path, sclnet_ckpt, tiny_dataset):
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mobilereid.cli",
            "export",
            str(sclnet_ckpt),
            "--target",
            "executorch,tflite",
            "--calib",
            str(tiny_dataset),
            "-o",
            str(out),
            "--int8",
            "--processes",
            "2",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(hidden(out)) < 2:
        time.sleep(0.2)  # both processes have made their temporary folders
    assert proc.poll() is None, proc.stderr.read()
    kids = _children(proc.pid)
    assert kids
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert hidden(out) == []
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.2)
    assert not [k for k in kids if Path(f"/proc/{k}").exists()]
