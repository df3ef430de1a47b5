"""The emulated arm64 board: real aarch64 LiteRT kernels under qemu-user, compared with this x86 host.

The slow tests need the board (`mobilereid board setup arm64`, which `make test-deps` runs as root); without it
they are skipped with the reason. The rest checks the pieces that need no emulation."""

import json

import numpy as np
import pytest

from mobilereid.arm64 import Arm64Board, BoardError, check_cpu
from mobilereid.data.datasets import load_dataset
from mobilereid.errors import MobileReIDError
from mobilereid.evaluate import arm_agreement, evaluate_artifacts, limited_split, parse_qemu
from mobilereid.report import eval_markdown


def test_limited_split_is_deterministic_and_keeps_matches(tiny_dataset, tmp_path):
    a = limited_split(tiny_dataset, tmp_path / "a", 2)
    b = limited_split(tiny_dataset, tmp_path / "b", 2)
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*.jpg"))  # noqa: E731
    assert names(a) == names(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names(a))
    ds, full = load_dataset(a, need_train=False), load_dataset(tiny_dataset, need_train=False)
    assert len(ds.query) == 2 and {s.pid for s in ds.query} <= {s.pid for s in ds.gallery}
    assert len(ds.gallery) < len(full.gallery)
    same = [s for s in full.gallery if s.pid in {q.pid for q in ds.query}]
    assert len(ds.gallery) == len(same) + 2  # the queries' identities, plus as many other gallery images
    with pytest.raises(MobileReIDError, match="--limit 0"):
        limited_split(tiny_dataset, tmp_path / "c", 0)


def test_qemu_device_names_and_agreement_numbers():
    assert parse_qemu("qemu-arm64") == "cortex-a76" and parse_qemu("qemu-arm64:neoverse-n1") == "neoverse-n1"
    assert check_cpu("max,sme=off") == "max,sme=off"
    for bad in ("qemu-arm64:pentium", "qemu-arm64:-cpu"):
        with pytest.raises(BoardError, match="choose one of"):
            parse_qemu(bad)
    host = np.array([[0.5, -0.25], [0.125, 0.0]], np.float32)
    arm = host.copy()
    arm[1, 0] += 0.25  # two LSB at scale 0.125
    meta = {"output": {"dtype": "int8", "quantization": {"scale": 0.125, "zero_point": 0}}}
    got = arm_agreement(arm, host, meta)
    assert got["identical_fraction"] == 0.5 and got["max_abs_diff"] == 0.25 and got["max_output_lsb"] == 2
    assert got["cosine_min"] < 1.0 and arm_agreement(host, host, meta)["cosine_min"] == pytest.approx(1.0)


def test_report_of_an_emulated_run_has_no_latency_and_an_arm_section():
    row = {
        "name": "m_int8.tflite",
        "runtime": "litert",
        "precision": "int8",
        "verification": "passed",
        "size_mb": 0.1,
        "metrics": {"rank1": 0.5, "rank5": 0.7, "mAP": 0.4, "mINP": 0.2, "cmc": [0.5, 0.7]},
        "latency": None,
        "arm": {
            "cpu": "cortex-a55",
            "qemu": "qemu-aarch64 version 10.0.2",
            "emulated_ms_per_image_p50": 812.0,
            "host_metrics": {"mAP": 0.4},
            "vs_host": {
                "images": 8,
                "max_abs_diff": 0.0,
                "max_output_lsb": 0,
                "cosine_min": 1.0,
                "cosine_mean": 1.0,
                "identical_fraction": 1.0,
            },
        },
    }
    md = eval_markdown(
        {
            "data": "d",
            "device": "qemu-arm64:cortex-a55",
            "threads": 1,
            "artifacts": [row],
            "limit": {"asked": 4, "queries": 4, "gallery": 12},
        }
    )
    assert "| - | - | - | - |" in md and "## On the emulated arm64 board (cortex-a55" in md and "not a latency" in md
    assert "Subset (--limit 4): 4 queries" in md


def test_unset_board_is_a_one_line_error(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nocache"))
    with pytest.raises(BoardError, match="mobilereid board setup arm64"):
        Arm64Board().require_ready()


board_missing = not Arm64Board().ready()


@pytest.fixture(scope="module")
def arm_artifacts(sclnet_ckpt, sclnet_exports):
    """A tiny SCL-net's fp32, static INT8 and dynamic-range .tflite files (the run's shared export, conftest.py)."""
    return sclnet_ckpt, {r["precision"]: r["artifact"] for r in sclnet_exports[1] if r["target"] == "tflite"}


@pytest.mark.slow
@pytest.mark.skipif(
    board_missing, reason="no emulated arm64 board: run `mobilereid board setup arm64` as root (make test-deps does)"
)
@pytest.mark.parametrize("cpu", ["cortex-a53", "cortex-a55"])
def test_int8_tflite_on_arm_matches_host(arm_artifacts, tiny_dataset, tmp_path, cpu):
    """Static INT8 .tflite: bit-identical ARM and x86 outputs on a NEON-only core (cortex-a53) and a dot-product core
    (cortex-a55), as measured (README "On ARM"). Dynamic-range .tflite: identical on NEON-only; on dot-product cores
    XNNPACK's KleidiAI kernels quantize activations per row, a real ARM-vs-x86 difference, bounded by what we
    measured."""
    ckpt, by = arm_artifacts
    staged = lambda: set((Arm64Board().root / "tmp").glob("mobilereid-eval.*"))  # noqa: E731
    before = staged()
    report = evaluate_artifacts(
        [by["int8"], by["dynamic"]],
        tiny_dataset,
        tmp_path / "r",
        reference=ckpt,
        device=f"qemu-arm64:{cpu}",
        threads=1,
        limit=4,
        gallery_formats="int8,binary",
    )
    rows = {r["precision"]: r for r in report["artifacts"]}
    static, dynamic = rows["int8"]["arm"], rows["dynamic"]["arm"]
    # the gallery search ran on the board too (the host's numpy code, on the board's embeddings): same results
    on_board = {f["format"]: f for f in rows["int8"]["gallery_formats_device"]}
    assert set(on_board) == {"float32", "int8", "binary"}
    assert all(
        f["top1_same_as_host"] == 1.0 and f["mAP_minus_host"] == 0.0 and f["emulated"] for f in on_board.values()
    )
    assert static["cpu"] == cpu and "qemu-aarch64 version 10" in static["qemu"]
    assert static["vs_host"]["identical_fraction"] == 1.0 and static["vs_host"]["max_output_lsb"] == 0
    assert static["vs_host"]["images"] == report["limit"]["queries"] + report["limit"]["gallery"]
    if cpu == "cortex-a53":  # NEON only: XNNPACK's qd8 kernels, as on x86
        assert dynamic["vs_host"]["identical_fraction"] == 1.0
    else:  # dotprod: KleidiAI's per-row activation quantization (measured here: cosine min 0.999985, max |d| 2.3e-3)
        assert dynamic["vs_host"]["identical_fraction"] < 1.0 and dynamic["vs_host"]["cosine_min"] > 0.9999
    assert rows["int8"]["latency"] is None and rows["int8"]["drift"]["cosine_mean"] > 0.9
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## On the emulated arm64 board" in md and "Gallery search on the device" in md
    assert not staged() - before  # the files staged for this run are gone
    assert not (Arm64Board().root / "proc" / "self").exists()  # /proc is unmounted after the run (runs take a lock)
    json.dumps(report)


@pytest.mark.skipif(board_missing, reason="no emulated arm64 board")
def test_runtimes_the_board_lacks_are_refused(arm_artifacts, tiny_dataset, tmp_path):
    ckpt, by = arm_artifacts
    from mobilereid.export import export_checkpoint

    onnx = export_checkpoint(ckpt, "onnx", tiny_dataset, tmp_path / "o")[0]["artifact"]
    with pytest.raises(MobileReIDError, match="runtime onnxruntime is not installed on the emulated arm64 board"):
        evaluate_artifacts([onnx], tiny_dataset, tmp_path / "r", device="qemu-arm64:cortex-a55", limit=2)


def test_board_deletes_only_inside_a_cache_it_made(tmp_path, monkeypatch):
    """The cache folder is claimed with a marker; a foreign non-empty folder there is refused, and the board's own
    clean-up refuses paths outside its cache and mount points below them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    board = Arm64Board()
    board.cache.mkdir(parents=True)
    (board.cache / "notes.txt").write_text("a user's file")
    with pytest.raises(BoardError, match="was not made by `mobilereid board setup`"):
        board._claim_cache()
    (board.cache / "notes.txt").unlink()
    board._claim_cache()
    assert board.owner_mark.is_file()
    half_built = board.root / "usr" / "bin"
    half_built.mkdir(parents=True)
    board._remove_ours(board.root)
    assert not board.root.exists() and board.owner_mark.is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(BoardError, match="not inside a board cache made by mobilereid"):
        board._remove_ours(elsewhere)
    assert elsewhere.is_dir()


@pytest.mark.slow
@pytest.mark.skipif(board_missing, reason="the arm64 board is not set up (mobilereid board setup arm64, as root)")
def test_inspect_on_the_board_gives_the_hosts_int8_numerics(arm_artifacts, sclnet_exports, tiny_dataset):
    """`inspect --device qemu-arm64`: every op output computed by the board's aarch64 LiteRT reference kernels, matched
    by name to the float model's; the int8 reference kernels give the same tensors there as on this host."""
    from mobilereid.data.preprocess import PreprocessSpec, preprocess_file
    from mobilereid.inspection.litert_ops import intermediates
    from mobilereid.inspection.on_board import board_intermediates
    from mobilereid.inspection.run import inspect_artifact, sample_images
    from mobilereid.runtimes import open_runner

    ckpt, arts = arm_artifacts
    board = inspect_artifact(arts["int8"], ckpt, tiny_dataset, images=2, runs=5, device="qemu-arm64")
    nb = board["numerics"]
    assert "emulated arm64 board" in nb["computed_on"] and nb["matched_fraction"] >= 0.9
    runner = open_runner(arts["int8"], threads=1)
    spec = PreprocessSpec.from_dict(runner.meta["preprocess"])
    x = runner.prepare(preprocess_file(sample_images(tiny_dataset, 1)[0].path, spec, "NCHW"))
    on_arm, host = board_intermediates(arts["int8"], [x], "qemu-arm64")[0][0], intermediates(arts["int8"], [x])[0]
    assert on_arm.keys() == host.keys() and len(host) > 10
    assert all(np.array_equal(on_arm[k]["value"], host[k]["value"]) for k in host)  # every op output, bit for bit
    pte = next(r["artifact"] for r in sclnet_exports[1] if r["target"] == "executorch")
    with pytest.raises(MobileReIDError, match="LiteRT only"):
        inspect_artifact(pte, ckpt, tiny_dataset, device="qemu-arm64")
