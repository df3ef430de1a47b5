import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.data.datasets import load_dataset
from mobilereid.data.torchdata import PKBatches
from mobilereid.errors import CheckpointError, MobileReIDError
from mobilereid.losses import batch_hard_triplet
from mobilereid.models import build_model
from mobilereid.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mobilereid.train import TrainConfig, lr_at, train

runner = CliRunner()


def test_pk_batches_hold_p_ids_of_k_images(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    batches = PKBatches(ds.train, p=3, k=2).batches()
    assert batches
    for b in batches:
        pids = [ds.train[i].pid for i in b]
        assert len(b) == 6 and len(set(pids)) == 3 and all(pids.count(p) == 2 for p in set(pids))
    r0 = PKBatches(ds.train, 3, 2, rank=0, world=2).batches()
    r1 = PKBatches(ds.train, 3, 2, rank=1, world=2).batches()
    assert len(r0) == len(r1) and not set(map(tuple, r0)) & set(map(tuple, r1))


def test_batch_hard_triplet_hand_case():
    feat = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1.0, neg 3.0 -> 0; anchor 1: pos 1.0, neg 2.0 -> 0; anchor 2: pos .5, neg 2 -> 0;
    # anchor 3: .5 vs 2.5
    assert float(batch_hard_triplet(feat, labels, margin=1.5)) == pytest.approx((0.5 + 0 + 0 + 0) / 4)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.slow
def test_train_writes_checkpoints_and_resumes(tiny_dataset, tmp_path):
    cfg = TrainConfig(model="sclnet_test", epochs=1, p=3, k=2)
    result = train(cfg, tiny_dataset, tmp_path)
    assert set(result["metrics"]) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "model.pt").is_file()
    assert not list(tmp_path.glob("epoch_*.pt"))  # per-epoch copies only on request
    model, state = load_checkpoint(tmp_path / "model.pt")
    assert state["config"]["num_classes"] == 6
    cfg.epochs, cfg.keep_checkpoints = 3, 1
    resumed = train(cfg, tiny_dataset, tmp_path, resume=True, evaluate=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]  # the whole run, the resumed epochs after the first
    assert read_checkpoint(tmp_path / "last.pt")["extra"]["epoch"] == 3
    assert [p.name for p in tmp_path.glob("epoch_*.pt")] == ["epoch_003.pt"]
    assert "optimizer" not in read_checkpoint(tmp_path / "epoch_003.pt")["extra"]


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(epochs=-1), "--epochs -1: must be >= 1"),
        (dict(p=1), "-p 1"),
        (dict(lr=0.0), "--lr 0.0"),
        (dict(keep_checkpoints=-2), "--keep-checkpoints"),
    ],
)
def test_bad_training_values_are_refused(tiny_dataset, tmp_path, kw, msg):
    with pytest.raises(MobileReIDError, match=msg):
        train(TrainConfig(model="sclnet_test", **kw), tiny_dataset, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_resume_from_a_checkpoint_without_optimizer_state(tiny_dataset, tmp_path):
    save_checkpoint(tmp_path / "last.pt", build_model("sclnet_test", num_classes=6))
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        train(TrainConfig(model="sclnet_test", epochs=2, p=3, k=2), tiny_dataset, tmp_path, resume=True)


def test_resume_without_checkpoint_is_a_clear_error(tiny_dataset, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume from"):
        train(TrainConfig(model="sclnet_test", epochs=1, p=3, k=2), tiny_dataset, tmp_path, resume=True)


@pytest.mark.slow
def test_cli_train_vit_with_elimination(tiny_dataset, tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_dataset),
            "--model",
            "vit_test",
            "--epochs",
            "1",
            "-p",
            "3",
            "-k",
            "2",
            "--opt",
            "keep_ratio=0.75",
            "--opt",
            "windows=2",
            "-o",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "final: Rank-1" in r.output
    model, _ = load_checkpoint(tmp_path / "model.pt")
    assert model.cfg.keep_ratio == 0.75 and model.cfg.windows == 2


def test_cli_train_bad_option(tiny_dataset, tmp_path):
    r = runner.invoke(
        app, ["train", "--data", str(tiny_dataset), "--model", "vit_test", "--opt", "keep_ratio=2", "-o", str(tmp_path)]
    )
    assert r.exit_code == 2 and "keep_ratio must be in (0, 1]" in r.output


@pytest.mark.slow
def test_torchrun_two_process_gloo(tiny_dataset, tmp_path):
    (tmp_path / "tmp").mkdir()  # torchrun's log folders (torchelastic_*) go there, not into the system's /tmp
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path / "tmp"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mobilereid.cli",
        "train",
        "--data",
        str(tiny_dataset),
        "--model",
        "sclnet_test",
        "--epochs",
        "1",
        "-p",
        "3",
        "-k",
        "2",
        "-o",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    single = len(PKBatches(load_dataset(tiny_dataset).train, 3, 2).batches())
    # each of the 2 ranks ran half of the batches; rank 0 wrote the checkpoint and evaluated
    assert summary["history"][0]["epoch"] == 1 and "metrics" in summary
    assert load_checkpoint(tmp_path / "model.pt")[1]["extra"]["history"][0]["epoch"] == 1
    assert summary["history"][0]["steps"] == single // 2


@pytest.mark.parametrize("preset", ["sclnet_test", "vit_test", "osnet_test", "resnet_test"])
def test_another_identity_count_gets_a_new_classifier_and_keeps_everything_else(preset):
    from mobilereid.models.checkpoint import with_identity_count

    torch.manual_seed(0)
    source = build_model(preset, num_classes=4).eval()
    model, fresh = with_identity_count(source, 9)
    assert model.cfg.num_classes == 9 and fresh and all("classifier" in k for k in fresh)
    old, new = source.state_dict(), model.state_dict()
    assert all(new[k].shape[0] == 9 for k in fresh if new[k].dim() == 2)
    assert all(torch.equal(old[k], new[k]) for k in new if k not in fresh)  # the backbone and the neck, unchanged
    x = torch.randn(2, 3, *source.cfg.img_size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x))  # the embedding does not use the classifier


def test_init_from_a_checkpoint_with_another_identity_count_trains(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "four.pt", build_model("sclnet_test", num_classes=4).eval())
    cfg = TrainConfig(model="sclnet_test", epochs=1, p=3, k=2, init_checkpoint=str(init))
    train(cfg, tiny_dataset, tmp_path / "o", evaluate=False)
    _, state = load_checkpoint(tmp_path / "o" / "model.pt")
    assert state["config"]["num_classes"] == 6  # the tiny set's training identities
