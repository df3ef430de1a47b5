"""Output folders: a report overwrites only files a report of ours wrote there; a user's own files are refused
(issue 33: `evaluate -o DIR` and the pipeline's W/report replaced a user's report.md, report.json, cmc.png)."""

import pytest

from mobilereid.errors import MobileReIDError
from mobilereid.filesafety import staged_folder


def write(out, **files):
    with staged_folder(out) as stage:
        for name, text in files.items():
            (stage / name).write_text(text)


def test_a_users_file_is_never_overwritten_and_ours_are(tmp_path):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    (out / "cmc.png").write_text("my plot")
    with pytest.raises(MobileReIDError, match=r"rep/report.md: exists and was not written by mobilereid.*--force"):
        write(out, **{"report.md": "ours", "report.json": "{}"})
    assert (out / "report.md").read_text() == "my notes" and not (out / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage left beside it
    write(out, **{"report.json": "{}", "other.md": "1"})  # names the user has not used: fine
    write(out, **{"report.json": "{}", "other.md": "2"})  # ours now: replaced
    assert (out / "other.md").read_text() == "2" and (out / "cmc.png").read_text() == "my plot"
    with staged_folder(out, force=True) as stage:
        (stage / "report.md").write_text("ours")
    assert (out / "report.md").read_text() == "ours"
    write(out, **{"report.md": "ours again"})  # written by us once: ours from then on
    assert (out / "report.md").read_text() == "ours again"


def test_evaluate_refuses_a_users_report_before_any_work(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from mobilereid.cli import app

    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text('{"mine": 1}')
    r = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "missing.onnx"), "--data", str(tiny_dataset), "-o", str(out)]
    )
    assert r.exit_code == 2 and "report.json: exists and was not written by mobilereid" in r.output, r.output
    assert (out / "report.json").read_text() == '{"mine": 1}'


def test_only_scratch_folders_we_made_are_swept(tmp_path):
    """An export sweeps the scratch folders a SIGKILL left in its output folder: those holding Workdir's mark, not a
    user's folder that happens to share the name pattern."""
    from mobilereid.export.run import _output_lock
    from mobilereid.filesafety import Workdir

    out = tmp_path / "o"
    left = Workdir(out, "export").path  # as a killed export leaves it: __exit__ never ran
    users = out / ".export.notes"
    users.mkdir()
    (users / "todo.txt").write_text("mine")
    with _output_lock(out, True):
        pass
    assert not left.exists() and (users / "todo.txt").read_text() == "mine"
