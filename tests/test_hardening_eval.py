"""Evaluation defects found on a fresh clone (issue 33): results of two artifacts with one file name, datasets shared
through symlinks, and evaluator crashes reported with an unrelated line."""

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilereid.arm64 import Arm64Board
from mobilereid.errors import MobileReIDError
from mobilereid.evaluate import EVAL_SCRIPT, DeviceError, copy_eval_split, evaluate_artifacts
from mobilereid.programs import run_program


def _export(sclnet_exports, target: str, precision: str) -> Path:
    return next(r["artifact"] for r in sclnet_exports[1] if r["target"] == target and r["precision"] == precision)


def _copy(artifact: Path, folder: Path, data: bytes | None = None) -> Path:
    """The artifact and its sidecar in ``folder``; ``data``: other bytes, with the sidecar's sha256 to match."""
    folder.mkdir(parents=True)
    dst = folder / artifact.name
    meta = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    dst.write_bytes(artifact.read_bytes() if data is None else data)
    meta["sha256"] = hashlib.sha256(dst.read_bytes()).hexdigest()
    (folder / (artifact.name + ".json")).write_text(json.dumps(meta))
    return dst


def test_two_artifacts_with_one_file_name_keep_their_own_results(sclnet_ckpt, sclnet_exports, tiny_dataset, tmp_path):
    """a/sclnet_test.onnx and b/sclnet_test.onnx: each row is that artifact's (results were keyed by file name, so both
    rows showed b's metrics, and a's drift was computed from b's embeddings)."""
    import onnx
    from onnx import numpy_helper

    onnx_path = _export(sclnet_exports, "onnx", "fp32")
    a = _copy(onnx_path, tmp_path / "a")
    model = onnx.load(str(onnx_path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight, perturbed
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).normal(0, w.std(), w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w + noise, init.name))
    b = _copy(onnx_path, tmp_path / "b", model.SerializeToString())
    pair = evaluate_artifacts([a, b], tiny_dataset, tmp_path / "pair", reference=sclnet_ckpt)["artifacts"]
    assert pair[0]["drift"]["cosine_mean"] > 0.9999 > pair[1]["drift"]["cosine_mean"]  # a is the unchanged export
    for row, art in zip(pair, (a, b)):
        alone = evaluate_artifacts([art], tiny_dataset, tmp_path / f"alone_{art.parent.name}")["artifacts"][0]
        assert row["metrics"] == alone["metrics"] and row["sha256"] == alone["sha256"]
    assert pair[0]["metrics"] != pair[1]["metrics"] and [r["artifact"] for r in pair] == [str(a), str(b)]
    raw = sorted(p.name for p in (tmp_path / "pair" / "raw").glob("*.npz"))
    assert raw == ["0-sclnet_test.onnx.npz", "1-sclnet_test.onnx.npz"]


def test_evaluator_refuses_result_names_that_collide():
    """Run by hand with two models of one file name, the evaluator says so instead of overwriting one's results."""
    spec = importlib.util.spec_from_file_location("reid_eval", EVAL_SCRIPT)
    reid_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reid_eval)
    assert "distinct --key" in reid_eval.key_problem(["model.onnx", "model.onnx"], 2)
    assert "1 given for 2" in reid_eval.key_problem(["0-model.onnx"], 2)
    assert "plain file name" in reid_eval.key_problem(["../x"], 1)
    assert reid_eval.key_problem(["0-model.onnx", "1-model.onnx"], 2) is None


def test_device_copy_of_a_symlinked_dataset(tiny_dataset, tmp_path):
    """What ssh, adb and qemu-arm64 copy: query/ a link to another folder, gallery images links to files elsewhere
    (a shared Market-1501); the copy holds the images' content under the names as listed."""
    linked = tmp_path / "linked"
    (linked / "bounding_box_test").mkdir(parents=True)
    (linked / "query").symlink_to(tiny_dataset / "query", target_is_directory=True)
    for img in (tiny_dataset / "bounding_box_test").iterdir():
        (linked / "bounding_box_test" / img.name).symlink_to(img)
    for lossless in (False, True):
        dest = copy_eval_split(linked, tmp_path / f"copy{int(lossless)}", lossless=lossless)
        manifest = json.loads((dest / "manifest.json").read_text())
        assert len(manifest["query"]) == len(list((tiny_dataset / "query").iterdir()))
        for e in manifest["query"] + manifest["gallery"]:
            copied = dest / e["file"]
            assert not copied.is_symlink() and copied.stat().st_size > 0 and not e["file"].startswith("..")
        first = manifest["gallery"][0]["file"]
        if not lossless:
            assert (dest / first).read_bytes() == (tiny_dataset / first).read_bytes()


def test_killed_program_is_reported_as_a_crash_with_its_signal_and_step():
    """A runtime's abort or segfault: not its last chatter line, but the crash, the signal and the artifact."""
    code = (
        "import os, signal, sys; print('evaluating a/model.onnx', file=sys.stderr, flush=True); "
        "print('evaluating b/model.tflite', file=sys.stderr, flush=True); "
        "print('INFO: Created TensorFlow Lite XNNPACK delegate for CPU.', file=sys.stderr, flush=True); "
        "os.kill(os.getpid(), signal.SIGSEGV)"
    )
    with pytest.raises(DeviceError) as info:
        run_program([sys.executable, "-c", code], "local evaluator", DeviceError, marker="evaluating ")
    assert str(info.value) == (
        "local evaluator: crashed with signal SIGSEGV (Segmentation fault) while evaluating b/model.tflite"
    )
    # behind a shell (ssh runs the evaluator through one) the signal is an exit status; faulthandler's line says it
    shell = f'{sys.executable} -X faulthandler -c "{code}"; exit $?'
    with pytest.raises(
        MobileReIDError,
        match=r"^evaluator on pi: Fatal Python error: Segmentation fault "
        r"while evaluating b/model.tflite$",
    ):
        run_program(["sh", "-c", shell], "evaluator on pi", marker="evaluating ")


def _aborting_tflite(sclnet_exports, folder: Path) -> Path:
    """A corrupted .tflite that makes LiteRT abort (C++ check, SIGABRT) at allocate: the activation scale of the first
    ADD's output set to 6.1e32 (one float32 in the file; the ADD's requantization check aborts)."""
    from ai_edge_litert.interpreter import Interpreter

    int8 = _export(sclnet_exports, "tflite", "int8")
    src = int8.read_bytes()
    interp = Interpreter(model_content=src)
    add = next(op for op in interp._get_ops_details() if op["op_name"] == "ADD")
    scale = np.float32(interp.get_tensor_details()[add["outputs"][0]]["quantization_parameters"]["scales"][0]).tobytes()
    assert src.count(scale) == 1
    return _copy(int8, folder, src.replace(scale, np.float32(6.1e32).tobytes()))


def test_runtime_abort_names_the_artifact_it_crashed_on(sclnet_exports, tiny_dataset, tmp_path):
    """The error says it crashed, by which signal, on which artifact; it used to be the XNNPACK delegate's INFO line."""
    bad = _aborting_tflite(sclnet_exports, tmp_path / "b")
    good = _export(sclnet_exports, "onnx", "fp32")  # evaluated first: the crash is pinned to the model it happened on
    with pytest.raises(DeviceError) as info:
        evaluate_artifacts([good, bad], tiny_dataset, tmp_path / "rep")
    assert str(info.value) == f"local evaluator: crashed with signal SIGABRT (Aborted) while evaluating {bad}"


@pytest.mark.skipif(not Arm64Board().ready() or os.geteuid() != 0, reason="no emulated arm64 board (make test-deps)")
def test_runtime_abort_on_the_emulated_board_names_the_users_artifact(sclnet_exports, tiny_dataset, tmp_path):
    """On a device the evaluator runs staged copies (STAGE/models/1/NAME): the error names the user's path."""
    bad = _aborting_tflite(sclnet_exports, tmp_path / "b")
    good = _export(sclnet_exports, "tflite", "fp32")
    with pytest.raises(MobileReIDError) as info:
        evaluate_artifacts([good, bad], tiny_dataset, tmp_path / "rep", device="qemu-arm64:cortex-a55", limit=2)
    assert str(info.value) == f"arm64 (cortex-a55): crashed with signal SIGABRT (Aborted) while evaluating {bad}"
