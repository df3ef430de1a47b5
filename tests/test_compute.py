"""Devices, precision, input workers and ranks of the learning stages (compute.py, distributed.py, PKLoader).

Everything here runs on the CPU: CUDA paths are checked for their refusals (this machine has no GPU); the GPU
figures come from scripts/gpu_check.sh on a lent GPU machine (README, "Training at scale")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.compute import resolve
from mobilereid.data.datasets import load_dataset
from mobilereid.data.torchdata import PKBatches, PKLoader, ReIDImages
from mobilereid.embeddings import evaluate_model, preprocess_spec_for
from mobilereid.errors import MobileReIDError
from mobilereid.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mobilereid.models.registry import build_model
from mobilereid.models.vit import fused_attention
from mobilereid.train import TrainConfig, train

runner = CliRunner()


@pytest.mark.parametrize(
    "device,precision,workers,msg",
    [
        ("cuda", "fp32", None, "--device cuda: this torch sees no CUDA device"),
        ("cuda:7", "fp32", None, "--device cuda:7: this torch sees no CUDA device"),
        ("tpu", "fp32", None, "--device tpu: unknown device"),
        ("cuda:x", "fp32", None, "no CUDA device"),
        ("cpu", "fp16", None, "--precision fp16: not on the CPU"),
        ("cpu", "fp8", None, "--precision fp8: unknown"),
        ("cpu", "fp32", -1, "--workers -1: must be >= 0"),
    ],
)
def test_bad_compute_options_are_one_line(device, precision, workers, msg):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA refusals do not apply")
    with pytest.raises(MobileReIDError, match=msg.replace("(", r"\(")):
        resolve(device, precision, workers)


def test_cuda_index_beyond_the_machine_is_refused(monkeypatch):
    """cuda:7 on a one-GPU machine and cuda:N under a multi-rank torchrun: the device count is pretended (this machine
    has none); what is tested is the check before any CUDA call."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(MobileReIDError, match=r"cuda:7: this machine has 1 CUDA device\(s\) \(cuda:0..cuda:0\)"):
        resolve("cuda:7")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MobileReIDError, match="under torchrun every rank would use the same GPU"):
        resolve("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(MobileReIDError, match="LOCAL_RANK 1 but this machine has 1 CUDA device"):
        resolve("cuda")


def test_auto_is_the_cpu_here_and_workers_default_to_none_on_it():
    c = resolve("auto", "bf16")
    assert c.device.type == ("cuda" if torch.cuda.is_available() else "cpu") and c.precision == "bf16"
    if not torch.cuda.is_available():
        assert c.workers == 0 and c.record() == {"device": "cpu", "precision": "bf16", "workers": 0}


@pytest.mark.parametrize("command", ["train", "compress", "quant-finetune"])
def test_cli_refuses_bad_devices_before_any_work(tiny_dataset, tmp_path, command):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    source = save_checkpoint(tmp_path / "src.pt", build_model("vit_test", num_heads=4, num_classes=6))
    out = tmp_path / "out"
    args = {
        "train": ["train", "--model", "sclnet_test"],
        "compress": ["compress", str(source)],
        "quant-finetune": ["quant-finetune", str(source)],
    }[command]
    for bad, msg in (
        (["--device", "cuda"], "error: --device cuda: this torch sees no CUDA device"),
        (["--precision", "fp16"], "error: --precision fp16: not on the CPU"),
        (["--workers", "-1"], "error: --workers -1: must be >= 0"),
    ):
        r = runner.invoke(app, [*args, "--data", str(tiny_dataset), "-o", str(out), *bad])
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(msg), r.output
        assert not out.exists()


def test_evaluate_torch_device_is_checked_before_any_work(tiny_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ref = save_checkpoint(tmp_path / "ref.pt", build_model("sclnet_test", num_classes=6))
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "missing.onnx"),
            "--data",
            str(tiny_dataset),
            "--reference",
            str(ref),
            "--torch-device",
            "cuda",
            "-o",
            str(tmp_path / "ev"),
        ],
    )
    assert r.exit_code == 2 and "error: --torch-device cuda: this torch sees no CUDA device" in r.output, r.output
    assert not (tmp_path / "ev").exists()


def _epoch_batches(dataset, workers: int, seed: int = 3, epoch: int = 1):
    ds = load_dataset(dataset)
    images = ReIDImages(
        ds.train, preprocess_spec_for(build_model("sclnet_test", num_classes=6)), ds.train_labels(), augment=True
    )
    loader = PKLoader(images, PKBatches(ds.train, 3, 2, seed), seed, workers)
    return [tuple(t.clone() for t in b) for b in loader.epoch(epoch)]


def test_same_seed_same_batches_whatever_the_worker_count(tiny_dataset):
    """Augmentation draws from a generator per item (seed, epoch, rank, batch, slot), so batches do not depend on
    which worker built them or in which order the workers ran."""
    alone, two = _epoch_batches(tiny_dataset, 0), _epoch_batches(tiny_dataset, 2)
    assert len(alone) == len(two) > 1
    for (x0, y0, c0), (x2, y2, c2) in zip(alone, two):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(c0, c2)
    other_epoch = _epoch_batches(tiny_dataset, 0, epoch=2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(alone, other_epoch))  # augmentation does change per epoch
    flips = [b[0] for b in alone]
    assert any(not torch.equal(flips[0][i], flips[0][j]) for i in range(len(flips[0])) for j in range(i))


def test_decoded_images_are_cached_and_shared(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    images = ReIDImages(
        ds.train, preprocess_spec_for(build_model("sclnet_test", num_classes=6)), ds.train_labels(), augment=True
    )
    assert images.cached
    first = images.resized(0).copy()
    assert images._cache.filled[0] == 1 and np.array_equal(images._cache.get(0), first)
    plain = images.unaugmented()
    assert plain._cache is images._cache and not plain.augment and images.augment
    assert torch.equal(plain[0][0], plain[0][0])  # no augmentation: the same tensor every time


def test_fused_attention_embeds_as_the_explicit_path_and_leaves_exports_alone():
    torch.manual_seed(0)
    model = build_model("vit_test", num_heads=4, num_classes=6).eval()
    x = torch.randn(3, 3, *model.cfg.img_size)
    with torch.no_grad():
        explicit = model(x)
        with fused_attention(model):
            fused = model(x)
    assert torch.allclose(explicit, fused, atol=1e-5), (explicit - fused).abs().max()
    attention = [m for m in model.modules() if hasattr(m, "fused")]
    assert attention and not any(m.fused for m in attention)  # back to the explicit graph after the block
    ops = {str(n.target) for n in torch.export.export(model, (x,)).graph.nodes if n.op == "call_function"}
    assert not any("scaled_dot_product" in op for op in ops) and any("softmax" in op for op in ops)


def test_bf16_training_on_the_cpu_writes_fp32_cpu_checkpoints_and_resumes(tiny_dataset, tmp_path):
    cfg = TrainConfig(model="sclnet_test", epochs=1, p=3, k=2, precision="bf16", device="cpu")
    result = train(cfg, tiny_dataset, tmp_path)
    assert result["compute"]["precision"] == "bf16" and np.isfinite(result["history"][0]["loss"])
    assert 0 <= result["history"][0]["data_wait_seconds"] <= result["history"][0]["seconds"]
    last = read_checkpoint(tmp_path / "last.pt")
    tensors = list(last["state_dict"].values()) + [
        t for s in last["extra"]["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)
    ]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert all(t.dtype == torch.float32 for t in last["state_dict"].values() if t.is_floating_point())
    assert "grad_scaler" not in last["extra"]  # bf16 needs none
    cfg.epochs = 2
    resumed = train(cfg, tiny_dataset, tmp_path, resume=True, evaluate=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_bf16_and_fp32_training_reach_similar_accuracy(tiny_dataset, tmp_path):
    """Same seed, same epochs: bf16 autocast ends near fp32 (the tiny set's mAP moves by a few points between seeds;
    the bound is that noise, not a claim of equality)."""
    maps = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(model="sclnet_test", epochs=3, p=3, k=2, precision=precision, device="cpu")
        maps[precision] = train(cfg, tiny_dataset, tmp_path / precision)["metrics"]["mAP"]
    assert abs(maps["bf16"] - maps["fp32"]) < 0.1, maps


def test_evaluation_is_exact_fp32_whatever_the_training_precision(tiny_dataset, tmp_path):
    model = build_model("sclnet_test", num_classes=6)
    ds = load_dataset(tiny_dataset)
    a = evaluate_model(model, ds)
    b = evaluate_model(model, ds, compute=resolve("cpu", "bf16"))  # the reference ignores the stage's autocast
    assert a == b


@pytest.mark.slow
def test_torchrun_compress_and_quant_finetune_on_two_gloo_ranks(tiny_dataset, tmp_path):
    """The choices (heads to prune) are made on rank 0 and broadcast, so both ranks cut the same weights; rank 0
    writes; quant-finetune's guard is scored on rank 0 and followed by both."""
    torch.manual_seed(0)
    train(
        TrainConfig(model="vit_test", epochs=1, p=3, k=2, model_options={"num_heads": 4}),
        tiny_dataset,
        tmp_path / "t",
        evaluate=False,
    )
    (tmp_path / "tmp").mkdir()  # torchrun's log folders (torchelastic_*) go there, not into the system's /tmp
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path / "tmp"))
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mobilereid.cli",
    ]
    proc = subprocess.run(
        run
        + [
            "compress",
            str(tmp_path / "t" / "model.pt"),
            "--data",
            str(tiny_dataset),
            "-o",
            str(tmp_path / "c"),
            "--head-rate",
            "0.25",
            "--rounds",
            "1",
            "--epochs-per-round",
            "1",
            "--arch-epochs",
            "0",
            "--final-epochs",
            "1",
            "-p",
            "3",
            "-k",
            "2",
            "--stat-images",
            "16",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "c" / "compress_report.json").read_text())
    assert report["ranks"] == 2 and report["steps"][0]["step"] == "heads"
    model, _ = load_checkpoint(tmp_path / "c" / "compressed.pt")
    assert sum(model.cfg.heads_per_layer) == 8 - 2  # 25 % of 2 x 4 heads
    proc = subprocess.run(
        run
        + [
            "quant-finetune",
            str(tmp_path / "t" / "model.pt"),
            "--data",
            str(tiny_dataset),
            "-o",
            str(tmp_path / "q.pt"),
            "--epochs",
            "1",
            "--guard-every",
            "1",
            "-p",
            "3",
            "-k",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = read_checkpoint(tmp_path / "q.pt")["extra"]
    assert extra["guard"]["checks"][0]["epoch"] == 1 and extra["history"][0]["epoch"] == 1
