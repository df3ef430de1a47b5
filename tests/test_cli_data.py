from typer.testing import CliRunner

from mobilereid import __version__
from mobilereid.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_synth_then_check(tmp_path):
    out = tmp_path / "set"
    r = runner.invoke(
        app, ["data", "synth", str(out), "--ids", "6", "--cameras", "3", "--height", "64", "--width", "32"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "check", str(out)])
    assert r.exit_code == 0, r.output
    assert "train" in r.output and "gallery" in r.output and "ok (images decoded)" in r.output


def test_check_missing_folder_is_one_line_error(tmp_path):
    r = runner.invoke(app, ["data", "check", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert "error:" in r.output and "dataset folder does not exist" in r.output
    assert "Traceback" not in r.output


def test_synth_bad_option():
    r = runner.invoke(app, ["data", "synth", "/tmp/never-written", "--ids", "1"])
    assert r.exit_code == 2 and "--ids 1: must be >= 4" in r.output


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["data", "--help"],
        ["data", "synth", "--help"],
        ["data", "check", "--help"],
        ["pipeline", "--help"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and "Usage" in r.output
