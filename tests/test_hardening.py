"""Guarantees a user's files and shell rely on: umask-honouring outputs, clean SIGTERM, whole-request validation."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mobilereid.data.synth import SynthConfig, generate
from mobilereid.errors import ExportError
from mobilereid.export import export_checkpoint, resolve_targets
from mobilereid.export.common import atomic_write_bytes
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_outputs_honour_the_umask(tmp_path, umask_027):
    atomic_write_bytes(tmp_path / "artifact.bin", b"x")
    assert (tmp_path / "artifact.bin").stat().st_mode & 0o777 == 0o640
    generate(tmp_path / "synth", SynthConfig(ids=4, cameras=2, seed=0, height=32, width=16))
    assert (tmp_path / "synth").stat().st_mode & 0o777 == 0o750


def test_export_artifacts_and_sidecars_honour_the_umask(tmp_path, tiny_dataset):
    old = os.umask(0o022)
    try:
        ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
        (r,) = export_checkpoint(ckpt, "onnx", tiny_dataset, tmp_path / "out")
    finally:
        os.umask(old)
    assert r["artifact"].stat().st_mode & 0o777 == 0o644
    assert r["artifact"].with_name(r["artifact"].name + ".json").stat().st_mode & 0o777 == 0o644


def test_whole_export_request_is_validated_first():
    assert resolve_targets("all", int8=False) == ["onnx", "executorch", "tflite"]
    assert resolve_targets("all", int8=True) == ["onnx", "executorch", "tflite", "edgetpu"]
    with pytest.raises(ExportError, match="tflm runs full-integer models only"):
        resolve_targets("onnx,tflm", int8=False)


def test_sigterm_mid_export_leaves_no_temporary_files(tmp_path, tiny_dataset):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mobilereid.cli", "export", str(ckpt), "--target", "tflite", "--int8",
                             "--calib", str(tiny_dataset), "-o", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out.is_dir() and any(p.name.startswith(".") for p in out.iterdir())):
        time.sleep(0.2)  # wait until the export has made its temporary folder
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 143
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
