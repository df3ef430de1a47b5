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
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mobilereid.cli",
            "export",
            str(ckpt),
            "--target",
            "tflite",
            "--int8",
            "--calib",
            str(tiny_dataset),
            "-o",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (out.is_dir() and any(p.name.startswith(".") for p in out.iterdir())):
        time.sleep(0.2)  # wait until the export has made its temporary folder
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 143
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "text,msg",
    [
        ('target = "onnx"\n[verify]\nmin_cosine = "high"\n', "min_cosine must be a number"),
        ('target = "onnx"\n[verify]\nmin_cosine = 1.01\n', "min_cosine must be a number between -1 and 1"),
        ('target = "onnx"\n[verify]\nimages = 0\n', "verify.images must be a whole number >= 1"),
        ('target = "onnx"\nvariantz = ["fp32"]\n', "unknown key"),
        ('target = "onnx"\n[int8]\ncalibration_image = 3\n', r"unknown key\(s\) calibration_image in \[int8\]"),
        ('target = "onnx"\n[int8]\nint16_headroom = 0.5\n', "int8.int16_headroom must be a number from 1 to 256"),
    ],
)
def test_bad_recipe_values_are_one_line_errors(tmp_path, tiny_dataset, text, msg):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(ExportError, match=msg):
        export_checkpoint(ckpt, "onnx", tiny_dataset, tmp_path / "o", recipe_path=tmp_path / "r.toml")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "target,text,msg",
    [
        (
            "executorch",
            '[int8]\nint16_ops = ["ADD"]\n',
            "int16_ops asks for int16 activations, but ExecuTorch's XNNPACK backend has no int16 kernels",
        ),
        (
            "executorch",
            'variants = ["int16x8"]\n',
            "variant int16x8 asks for int16 activations, but ExecuTorch's XNNPACK",
        ),
        ("edgetpu", '[int8]\nint16_ops = ["ADD"]\n', "the Edge TPU has no int16 kernels"),
        ("tflm", '[int8]\nint16_ops = ["ADD"]\n', "TFLite Micro route converts through onnx2tf"),
        (
            "tflite",
            'converter = "onnx2tf"\n[int8]\nint16_ops = ["ADD"]\n',
            'int16_ops needs converter = "litert-torch"',
        ),
        (
            "tflite",
            'converter = "litert-torch"\n[int8]\nint16_ops = "ADD"\n',
            "int16_ops must be a list of TFLite op type names",
        ),
    ],
)
def test_int16_requests_where_no_int16_kernels_exist_are_one_line_errors(tmp_path, target, text, msg):
    """Issue 15's bad input: an int16 request on a runtime without int16 kernels (or on the TFLite route that cannot
    mix precisions per op) is refused when the recipe is read, before any model is loaded or file written."""
    from mobilereid.export.recipes import load_recipe

    (tmp_path / "r.toml").write_text(f'target = "{target}"\n' + text)
    with pytest.raises(ExportError, match=msg) as err:
        load_recipe(target, "sclnet" if target == "tflm" else "vit", tmp_path / "r.toml")  # no ViT for microcontrollers
    assert str(tmp_path / "r.toml") in str(err.value) and "\n" not in str(err.value)


def test_too_few_verification_images_are_said_or_refused(tmp_path, tiny_dataset):
    import shutil

    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    imgs = sorted((tiny_dataset / "query").glob("*.jpg"))
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(imgs[0], one)
    with pytest.raises(ExportError, match=r"1 held-out image\(s\) for verification; at least 2"):
        export_checkpoint(ckpt, "onnx", one, tmp_path / "o")
    few = tmp_path / "few"
    few.mkdir()
    for p in imgs[:5]:
        shutil.copy(p, few)
    (r,) = export_checkpoint(ckpt, "onnx", few, tmp_path / "o2")
    assert r["verification"]["images"] == 5 and any("recipe asks for 16" in n for n in r["verification"]["notes"])


def test_corrupt_training_image_is_one_line_naming_it(tmp_path):
    from typer.testing import CliRunner

    from mobilereid.cli import app

    data = tmp_path / "d"
    generate(data, SynthConfig(ids=8, cameras=2, seed=3, height=32, width=16))
    victim = sorted((data / "bounding_box_train").glob("*.jpg"))[3]
    victim.write_bytes(b"\xff\xd8\xff truncated")
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--model",
            "sclnet_test",
            "--epochs",
            "1",
            "-p",
            "2",
            "-k",
            "2",
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and victim.name in r.output and "cannot decode image" in r.output
    assert "Traceback" not in r.output


def test_unwritable_outputs_are_one_line_errors(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from mobilereid.cli import app

    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(
        app,
        ["export", str(ckpt), "--target", "onnx", "--calib", str(tiny_dataset), "-o", str(tmp_path / "afile" / "out")],
    )
    assert r.exit_code == 2 and "afile" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(
        app, ["export", str(tmp_path), "--target", "onnx", "--calib", str(tiny_dataset), "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "is a directory" in r.output


def test_library_chatter_is_silenced_unless_verbose(tmp_path, tiny_dataset):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    cmd = [
        sys.executable,
        "-m",
        "mobilereid.cli",
        "export",
        str(ckpt),
        "--target",
        "executorch",
        "--calib",
        str(tiny_dataset),
    ]
    quiet = subprocess.run(cmd + ["-o", str(tmp_path / "q")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    ours = ("exporting", "warning:", "executorch: converting", "verifying ")  # our progress lines
    assert [l for l in quiet.stderr.splitlines() if l.strip() and not l.startswith(ours)] == []
    loud = subprocess.run(
        [sys.executable, "-m", "mobilereid.cli", "--verbose"] + cmd[3:] + ["-o", str(tmp_path / "v")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert loud.returncode == 0 and [l for l in loud.stderr.splitlines() if l.strip() and not l.startswith(ours)]


def test_checkpoint_whose_state_dict_holds_a_non_tensor(tmp_path):
    from mobilereid.errors import CheckpointError
    from mobilereid.models.checkpoint import load_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    state = torch.load(path, weights_only=True)
    key = next(iter(state["state_dict"]))
    state["state_dict"][key] = "not a tensor"
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=f"state dict entry '{key}' is a str, not a tensor"):
        load_checkpoint(tmp_path / "bad.pt")


def test_reports_replace_only_folders_they_wrote(tmp_path):
    from mobilereid.errors import MobileReIDError
    from mobilereid.filesafety import staged_folder

    out = tmp_path / "rep"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "mine.txt").write_text("user data")
    with pytest.raises(MobileReIDError, match="raw: exists and was not written by mobilereid"):
        with staged_folder(out) as stage:
            (stage / "raw").mkdir()
            (stage / "report.md").write_text("x")
    assert (out / "raw" / "mine.txt").read_text() == "user data" and not (out / "report.md").exists()
    other = tmp_path / "rep2"
    for _ in range(2):  # a second report replaces the folder the first one wrote
        with staged_folder(other) as stage:
            (stage / "raw").mkdir()
            (stage / "raw" / "a.npz").write_text("y")
    assert (other / "raw" / "a.npz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
