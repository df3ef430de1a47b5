"""Issue 33, items 4-7: helper processes die with a killed command, SIGTERM stops a parallel pipeline promptly, one
run per work (or output) folder, and a stage whose files were damaged re-runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from mobilereid.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _gone(pids, seconds: float) -> list[int]:
    """The pids still running (zombies count as gone) after waiting up to ``seconds``."""
    deadline = time.time() + seconds
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


def _wait_for(condition, seconds: float, what: str, proc=None):
    deadline = time.time() + seconds
    while not condition():
        assert proc is None or proc.poll() is None, f"{what}: the command ended early ({proc.returncode})"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _hidden(folder: Path) -> list[str]:
    """Dot-files and dot-folders anywhere below ``folder`` except the pipeline's owner marks."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != ".mobilereid-stage")


# item 4: the parent is killed with SIGKILL -------------------------------------------------------------------------

HELPER = """
import os, sys, time
from pathlib import Path


def sleeper(marker, parent, mode):
    from mobilereid import lifecycle

    if mode == "watch":  # a platform without prctl: the polling thread alone
        lifecycle._kernel_signals_parent_death = lambda signum: False
    lifecycle.die_with_parent(parent)
    Path(marker + ".started").write_text("")
    try:
        time.sleep(120)
    finally:  # SIGTERM unwinds
        Path(marker + ".unwound").write_text("")
"""

PARENT = """
import multiprocessing, os, sys, time
sys.path.insert(0, sys.argv[1])
mode, marker = sys.argv[2], sys.argv[3]
if mode in ("kernel", "watch"):
    import lifecycle_helper
    p = multiprocessing.get_context("spawn").Process(target=lifecycle_helper.sleeper, args=(marker, os.getpid(), mode))
    p.start()
    print(p.pid, flush=True)
elif mode == "pool":  # the pipeline's chain workers
    from concurrent.futures import ProcessPoolExecutor
    from mobilereid.lifecycle import end_on_interrupt
    from mobilereid.pipeline import _chain_worker_start
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(2, mp_context=context, initializer=_chain_worker_start,
                               initargs=(context.Value("i", 2), os.getpid()))
    futures = [pool.submit(end_on_interrupt, time.sleep, 120) for _ in range(2)]
    while len(pool._processes) < 2:
        time.sleep(0.05)
    print(*pool._processes, flush=True)
else:  # the export's second process, on a long target
    from mobilereid.export.second_process import SecondProcess
    ckpt, data, out = sys.argv[4:7]
    h = SecondProcess(["executorch"], dict(checkpoint=ckpt, calib=data, out_dir=out, int8=True))
    print(h._process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("mode", ["kernel", "watch", "pool", "export"])
def test_helpers_die_with_a_parent_killed_by_sigkill(tmp_path, mode, request):
    (tmp_path / "lifecycle_helper.py").write_text(HELPER)
    marker = str(tmp_path / "child")
    extra = []
    if mode == "export":
        extra = [str(request.getfixturevalue(name)) for name in ("sclnet_ckpt", "tiny_dataset")] + [str(tmp_path / "o")]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), mode, marker, *extra], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        kids = [int(p) for p in parent.stdout.readline().split()]
        assert kids, "the parent started no helper"
        family = set(kids) | {c.pid for c in psutil.Process(parent.pid).children(recursive=True)}  # resource tracker
        if mode in ("kernel", "watch"):
            _wait_for(lambda: Path(marker + ".started").exists(), 30, "the helper to start", parent)
        else:  # each helper has armed itself (lifecycle's parent-watch thread runs)
            armed = lambda: all(psutil.Process(k).num_threads() >= 2 for k in kids)  # noqa: E731
            _wait_for(armed, 30, "the helpers to start", parent)
    finally:
        parent.kill()
        parent.wait()
    assert _gone(family, 10) == []
    if mode in ("kernel", "watch"):
        assert Path(marker + ".unwound").exists()  # SIGTERM, not SIGKILL: its finally blocks ran
    if mode == "export":
        out = tmp_path / "o"
        assert not out.exists() or (not list(out.glob("*.pte")) and _hidden(out) == [])


def test_a_helper_whose_parent_died_before_it_armed_ends_at_once(tmp_path, monkeypatch):
    import multiprocessing

    (tmp_path / "lifecycle_helper.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import lifecycle_helper

    marker = str(tmp_path / "child")
    p = multiprocessing.get_context("spawn").Process(target=lifecycle_helper.sleeper, args=(marker, 1, "kernel"))
    p.start()
    p.join(30)
    assert p.exitcode == 143 and not Path(marker + ".started").exists()


# item 5: SIGTERM of a parallel pipeline ---------------------------------------------------------------------------

TWO_CHAINS = """
[data]
ids = 8
test_ids = 0
cameras = 2
height = 64
width = 32

[models.a]
preset = "sclnet_test"
epochs = 500
p = 3
k = 2

[models.b]
preset = "sclnet_test"
epochs = 500
p = 3
k = 2

[pipeline]
chains = ["a", "b"]

[compress]
model = ""

[quant_finetune]
model = ""
"""


def test_sigterm_stops_a_parallel_pipeline_at_once(tmp_path):
    cfg, work = tmp_path / "c.toml", tmp_path / "w"
    cfg.write_text(TWO_CHAINS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mobilereid.cli", "pipeline", str(cfg), "-w", str(work)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        logs = [work / "logs" / "a.log", work / "logs" / "b.log"]
        training = lambda: all(log.exists() and "running" in log.read_text() for log in logs)  # noqa: E731
        _wait_for(training, 90, "both chains training", proc)
        family = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        assert len(family) >= 2
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 143, proc.stderr.read()
    assert time.time() - t0 < 15
    assert _gone(family, 5) == []
    assert _hidden(work) == [] and not (work / "report").exists()


# item 6: one run per work folder ----------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_work_folder_stops_at_once_with_one_line(tmp_path, sclnet_ckpt, tiny_dataset):
    from mobilereid.export import export_checkpoint
    from mobilereid.worklock import LOCK_NAME, FolderInUseError, folder_lock

    cfg, work = tmp_path / "c.toml", tmp_path / "w"
    cfg.write_text('[data]\nsynthetic = false\nroot = "/nonexistent-dataset"\n')
    with folder_lock(work, "work folder"):
        assert (work / LOCK_NAME).read_text().strip() == str(os.getpid())
        r = runner.invoke(app, ["pipeline", str(cfg), "-w", str(work)])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {work}: another mobilereid run is using this work folder (pid {os.getpid()})"
    assert not (work / LOCK_NAME).exists()  # released: removed
    out = tmp_path / "o"
    from mobilereid.filesafety import Workdir

    stale = Workdir(out, "export").path  # left by an export that was killed (its __exit__ never ran)
    busy = pytest.raises(FolderInUseError, match="using this output folder$")
    with folder_lock(out, "output folder", in_file=False), busy:
        export_checkpoint(sclnet_ckpt, "onnx", tiny_dataset, out)
    assert stale.is_dir()  # not touched while another run holds the folder
    (result,) = export_checkpoint(sclnet_ckpt, "onnx", tiny_dataset, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([result["artifact"].name, result["artifact"].name + ".json"])


def test_a_lock_dies_with_its_holder(tmp_path):
    from mobilereid.worklock import folder_lock

    code = (
        "import sys, time\nfrom mobilereid.worklock import folder_lock\nwith folder_lock(sys.argv[1]):\n"
        " print('held', flush=True)\n time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        with folder_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with folder_lock(tmp_path):  # the kernel released it; the stale file is taken over
        pass


# item 7: a stage whose files were damaged re-runs -----------------------------------------------------------------


def test_a_stage_with_a_missing_or_changed_file_is_not_fresh(tmp_path):
    from mobilereid.pipeline import Stage

    st = Stage(tmp_path, "export_x")
    st.start("k")
    (st.dir / "model.onnx").write_bytes(b"1234")
    (st.dir / "model.onnx.json").write_text("{}")
    (st.dir / ".model.onnx.tmp").write_text("scratch")  # hidden: not a stage output
    st.done("k", {"artifacts": ["model.onnx"]}, 1.0)
    assert json.loads(st.stamp.read_text())["files"] == {"model.onnx": 4, "model.onnx.json": 2}
    assert "files" not in st.info()
    assert st.fresh("k", [st.dir])
    (st.dir / ".model.onnx.tmp").unlink()
    assert st.fresh("k", [st.dir])
    (st.dir / "model.onnx").write_bytes(b"12")  # truncated
    assert not st.fresh("k", [st.dir])
    (st.dir / "model.onnx").unlink()
    assert not st.fresh("k", [st.dir])


def test_run_chain_rebuilds_an_export_stage_missing_an_artifact(tmp_path, monkeypatch):
    import mobilereid.evaluate
    import mobilereid.export
    import mobilereid.train
    from mobilereid.pipeline import load_config, run_chain

    (tmp_path / "c.toml").write_text(
        '[models.m]\npreset = "sclnet_test"\n[compress]\nmodel = ""\n'
        '[quant_finetune]\nmodel = ""\n[export.targets]\nm = ["onnx"]\n'
    )
    cfg = load_config(tmp_path / "c.toml")
    exports = []

    def fake_train(tcfg, data_root, out):
        (out / "model.pt").write_bytes(b"weights")
        return {"metrics": {}}

    def fake_export(ckpt, targets, data_root, out, **kwargs):
        exports.append(out)
        (out / "model.onnx").write_bytes(b"onnx")
        (out / "model.onnx.json").write_text("{}")
        return [{"artifact": out / "model.onnx", "verification": {"passed": True}}]

    def fake_evaluate(artifacts, data_root, out, **kwargs):
        (out / "report.json").write_text(json.dumps({"artifacts": [a.name for a in artifacts]}))

    monkeypatch.setattr(mobilereid.train, "train", fake_train)
    monkeypatch.setattr(mobilereid.export, "export_checkpoint", fake_export)
    monkeypatch.setattr(mobilereid.evaluate, "evaluate_artifacts", fake_evaluate)
    run_chain("m", cfg, tmp_path, tmp_path / "data", "data-key")
    run_chain("m", cfg, tmp_path, tmp_path / "data", "data-key")
    assert len(exports) == 1  # up to date
    (tmp_path / "export_m" / "model.onnx").unlink()
    result = run_chain("m", cfg, tmp_path, tmp_path / "data", "data-key")
    assert len(exports) == 2 and not result["stages"]["export_m"].get("skipped")
    assert (tmp_path / "export_m" / "model.onnx").is_file()
    stamp = json.loads((tmp_path / "export_m" / "stamp.json").read_text())
    assert set(stamp["files"]) == {"model.onnx", "model.onnx.json"} and stamp["artifacts"] == ["model.onnx"]
