"""Issue 33 on a fresh clone: a full disk, absurd stored configs, stale temporaries and options that slipped through
must each end in one `error:` line (exit 2) naming the file or option, and leave no half-written file."""

import errno
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.errors import CheckpointError, WriteError, write_failure
from mobilereid.export.common import atomic_write_bytes
from mobilereid.models import build_model
from mobilereid.models.checkpoint import load_model, save_checkpoint, sweep_stale_temporaries

runner = CliRunner()


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB tmpfs (mounting needs root: skipped otherwise); ``fill()`` then takes its last free byte."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    def fill():
        with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as exc:
            while True:
                f.write(bytes(1 << 16))
        assert exc.value.errno == errno.ENOSPC

    try:
        (mnt / "run").mkdir()
        yield mnt, fill
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_naming_the_file_and_keeps_nothing_half_written(small_fs):
    mnt, fill = small_fs
    atomic_write_bytes(mnt / "run" / "old.json", b"old")
    fill()
    model = build_model("sclnet_test").eval()
    # train's last.pt / model.pt: torch.save's own failure is a RuntimeError from its C++ stream
    with pytest.raises(WriteError, match=r"run/last.pt: no space left on device \(write failed; nothing was kept\)$"):
        save_checkpoint(mnt / "run" / "last.pt", model)
    with pytest.raises(RuntimeError) as raw:  # what torch says when given a path (no errno survives)
        torch.save({"w": torch.zeros(1000)}, mnt / "run" / "raw.pt")
    (mnt / "run" / "raw.pt").unlink(missing_ok=True)
    assert "no space left on device" in str(write_failure(mnt / "run" / "raw.pt", raw.value))
    # atomic writes (artifacts, sidecars, train_summary.json); a file that existed is left as it was
    with pytest.raises(WriteError, match=r"run/model.onnx: no space left on device \(write failed; nothing was kept\)"):
        atomic_write_bytes(mnt / "run" / "model.onnx", bytes(200_000))
    with pytest.raises(WriteError, match=r"old.json: no space left on device \(write failed; the existing file is"):
        atomic_write_bytes(mnt / "run" / "old.json", bytes(200_000))
    assert (mnt / "run" / "old.json").read_bytes() == b"old"
    r = runner.invoke(
        app, ["data", "synth", str(mnt / "d"), "--ids", "8", "--cameras", "2", "--height", "64", "--width", "32"]
    )
    (line,) = error_lines(r)
    assert r.exit_code == 2 and line.startswith(f"error: {mnt / 'd' / 'bounding_box_train'}/")
    assert line.endswith(".jpg: no space left on device (write failed; the partial dataset was removed)")
    assert sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*")) == ["filler", "run", "run/old.json"]


def test_a_stray_full_disk_error_without_a_path_is_one_line(monkeypatch, tmp_path):
    import mobilereid.data.check

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # a library's write: no file name to give

    monkeypatch.setattr(mobilereid.data.check, "check_and_print", full)
    r = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert r.exit_code == 2 and error_lines(r) == ["error: No space left on device (a write failed)"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The states of a small trained-looking sclnet_test and a vit_test checkpoint, to be edited by hand."""
    folder = tmp_path_factory.mktemp("stored")
    torch.manual_seed(0)
    out = {}
    for family, preset in (("sclnet", "sclnet_test"), ("vit", "vit_test")):
        path = save_checkpoint(folder / f"{preset}.pt", build_model(preset, num_classes=4).eval())
        out[family] = (path, torch.load(path, weights_only=True))
    return out


@pytest.mark.parametrize(
    "family,key,value,expected",
    [
        ("sclnet", "img_size", [-64, 32], "[height, width], two multiples of 32 from 32 to 2048"),
        ("sclnet", "img_size", [0, 0], "[height, width], two multiples of 32 from 32 to 2048"),
        ("sclnet", "img_size", [100000, 100000], "[height, width], two multiples of 32 from 32 to 2048"),
        ("sclnet", "width", 1000, "a number in (0, 8]"),
        ("sclnet", "feature_dim", "many", "a whole number from 1 to 8192"),
        ("vit", "embed_dim", 10**6, "a whole number from 1 to 8192"),
        ("vit", "img_size", [0, 0], "[height, width], two whole numbers from 1 to 2048"),
        ("vit", "patch_size", 100, "at most the input's smaller side (32)"),
        ("vit", "keep_ratio", "most", "a number in (0, 1]"),
        ("vit", "depth", 64, "a model of at most 1 billion parameters (this one has 51.5 billion)"),
    ],
)
def test_absurd_stored_config_is_one_line_before_anything_is_built(stored, tmp_path, family, key, value, expected):
    _, state = stored[family]
    config = dict(state["config"], **{key: value})
    if key == "depth":  # every value in range, the product not: refused before 200 GB are allocated
        config.update(
            embed_dim=8192, num_heads=64, head_dim=None, heads_per_layer=None, mlp_hidden_per_layer=None, kv_index=None
        )
    bad = tmp_path / "bad.pt"
    torch.save(dict(state, config=config), bad)
    want = f"{bad}: stored config {key} = {value!r}: expected {expected}" if key != "depth" else expected
    with pytest.raises(CheckpointError) as exc:
        load_model(bad)
    assert want in str(exc.value)
    r = runner.invoke(app, ["info", str(bad)])
    assert r.exit_code == 2 and len(error_lines(r)) == 1 and want in r.output


def test_valid_stored_configs_still_load(stored, tmp_path):
    from mobilereid.models.configcheck import check_parameter_count, check_stored_config
    from mobilereid.models.registry import _FAMILIES, PRESETS, preset_config

    for name in PRESETS:  # every preset's config as a checkpoint stores it (config objects only: nothing is built)
        family, options = preset_config(name, num_classes=751)
        config = _FAMILIES[family][0](**options).to_dict()
        check_stored_config(family, config)
        check_parameter_count(family, config)
    pruned = dict(
        stored["vit"][1]["config"],
        heads_per_layer=[1, 2],
        kv_index=[list(range(20)), None],
        mlp_hidden_per_layer=[100, 256],
        keep_ratio=0.7,
        windows=2,
        window_weights="separate",
    )
    check_stored_config("vit", pruned)
    for family in ("sclnet", "vit"):
        path, _ = stored[family]
        model, _ = load_model(path)
        assert model.cfg.num_classes == 4
    r = runner.invoke(app, ["info", str(stored["sclnet"][0])])
    assert r.exit_code == 0 and "total:" in r.output


def test_random_bytes_are_said_to_be_no_torch_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "random.pt"
    for head, says in ((b"\x13", "not a torch file at all"), (b"\x80\x02", "not a loadable checkpoint")):
        path.write_bytes(head + rng.bytes(4096))
        with pytest.raises(CheckpointError, match=says) as exc:
            load_model(path)
        assert "run code" not in str(exc.value)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="GLOBAL print; refused, since loading it would run code"):
        load_model(tmp_path / "evil.pt")


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    from mobilereid.errors import DatasetError
    from mobilereid.train import TrainConfig, train

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its PID now belongs to no process: a writer killed mid-write
    stale, other = tmp_path / f".last.pt.tmp{done.pid}", tmp_path / f".model.pt.tmp{done.pid}"
    live = tmp_path / f".last.pt.tmp{os.getppid()}"  # a running process may still be writing it
    for p in (stale, other, live):
        p.write_bytes(b"partial")
    save_checkpoint(tmp_path / "last.pt", build_model("sclnet_test").eval())
    assert not stale.exists() and other.exists() and live.exists()  # a save sweeps its own name
    with pytest.raises(DatasetError):  # the trainer sweeps its folder first thing
        train(TrainConfig(model="sclnet_test", epochs=1), tmp_path / "no-data", tmp_path)
    assert not other.exists() and live.exists()
    assert sweep_stale_temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["export", "missing.pt", "--calib", "x", "--threads", "0"], "error: --threads 0: must be >= 1"),
        (["evaluate", "missing.tflite", "--data", "x", "--threads", "-2"], "error: --threads -2: must be >= 1"),
        (
            ["quant-finetune", "missing.pt", "--data", "x", "-o", "y.pt", "--threads", "-2"],
            "error: --threads -2: must be >= 0",
        ),
        (["data", "synth", "never-written", "--ids", "3"], "error: --ids 3: must be >= 4"),
    ],
)
def test_options_below_their_minimum_are_refused(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and error_lines(r)[0].startswith(message), r.output


def _resize_float_first(img, height, width):
    """resize_bilinear as it was: the whole image made float32 first (the reference for identical numbers)."""
    src = img.astype(np.float32)
    if src.shape[:2] == (height, width):
        return src

    def axis(dst, size):
        pos = (np.arange(dst, dtype=np.float32) + 0.5) * (np.float32(size) / np.float32(dst)) - 0.5
        pos = np.clip(pos, 0.0, size - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, np.minimum(lo + 1, size - 1), (pos - lo).astype(np.float32)

    y0, y1, wy = axis(height, src.shape[0])
    x0, x1, wx = axis(width, src.shape[1])
    top = src[y0][:, x0] * (1 - wx)[None, :, None] + src[y0][:, x1] * wx[None, :, None]
    bottom = src[y1][:, x0] * (1 - wx)[None, :, None] + src[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def test_resize_of_a_huge_photo_costs_no_float_copy_and_the_same_numbers():
    from mobilereid.data.preprocess import resize_bilinear

    rng = np.random.default_rng(0)
    for shape, size in (
        ((256, 128, 3), (256, 128)),
        ((301, 97, 3), (256, 128)),
        ((40, 21, 3), (256, 128)),
        ((1000, 500, 3), (64, 32)),
    ):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(resize_bilinear(img, *size), _resize_float_first(img, *size))
    huge = np.zeros((4000, 3000, 3), np.uint8)  # 36 MB; made float32 whole it took 144 MB more
    tracemalloc.start()
    try:
        resize_bilinear(huge, 256, 128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak
