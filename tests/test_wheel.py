"""A non-editable install works: the wheel carries the recipes, board profiles, pipeline configs and the device
evaluator, and `export` and `evaluate` run from another folder (issue 33 item 2: the wheel had none of them).

The fresh venv reuses the locked packages of the project's venv through a .pth line (nothing is downloaded) and
gets mobilereid only from the wheel; the test checks that the import really comes from the wheel."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    before = sorted(p.name for p in REPO.iterdir())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sorted(p.name for p in REPO.iterdir()) == before  # nothing built into the source tree
    (wheel,) = (tmp / "dist").glob("mobilereid-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "locked_stack.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return wheel, venv


def test_wheel_ships_the_package_data(wheel_venv):
    wheel, _ = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "mobilereid/recipes/tflite_sclnet.toml",
        "mobilereid/recipes/boards.toml",
        "mobilereid/configs/mcu.toml",
        "mobilereid/configs/compact.toml",
        "mobilereid/configs/default.toml",  # the default pipeline job is a config file
        "mobilereid/device/evaluator.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "eval/", "quant/"))]


@pytest.mark.slow
def test_installed_wheel_exports_and_evaluates_from_another_folder(wheel_venv, tiny_dataset, tmp_path):
    _, venv = wheel_venv
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    py = str(venv / "bin" / "python")
    where = subprocess.run(
        [py, "-c", "import mobilereid; print(mobilereid.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert str(venv) in where and str(REPO) not in where
    code = (
        "import torch; from mobilereid.models import build_model; "
        "from mobilereid.models.checkpoint import save_checkpoint;"
        "save_checkpoint('m.pt', build_model('sclnet_test').eval())"
    )
    subprocess.run([py, "-c", code], cwd=work, env=env, check=True, timeout=300)
    mr = str(venv / "bin" / "mobilereid")
    r = subprocess.run(
        [mr, "export", "m.pt", "--target", "onnx", "--calib", str(tiny_dataset), "-o", "exp"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (onnx,) = (work / "exp").glob("*.onnx")
    r = subprocess.run(
        [mr, "evaluate", str(onnx), "--data", str(tiny_dataset), "--reference", "m.pt", "-o", "rep"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (work / "rep" / "report.json").is_file() and "cosine" in (work / "rep" / "report.md").read_text()
