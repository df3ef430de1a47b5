import types

import pytest
import torch
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.compress.heads import head_entropy, heads_to_remove, prune_heads, schedule
from mobilereid.compress.pipeline import CompressConfig, compress
from mobilereid.compress.tokens import prune_kv_tokens, slots_to_keep, token_scores
from mobilereid.errors import MobileReIDError
from mobilereid.flops import count_macs, count_params
from mobilereid.models import build_model
from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint
from mobilereid.settings import check_cli

runner = CliRunner()


def model_and_input(**options):
    torch.manual_seed(0)
    m = build_model("vit_test", num_heads=4, num_classes=5, **options).eval()
    return m, torch.randn(3, 3, *m.cfg.img_size)


def test_entropy_on_hand_built_maps():
    uniform = torch.full((1, 2, 4), 0.25)
    onehot = torch.zeros(1, 2, 4)
    onehot[..., 1] = 1.0
    assert head_entropy(torch.cat([uniform, onehot])).tolist() == pytest.approx([2.0, 0.0])


def test_global_ranking_depth_weighting_and_last_head_rule():
    ent = [torch.tensor([1.0, 0.5]), torch.tensor([0.99, 0.2, 0.1])]
    # layer 1 is weighted by 1.02: 0.99 * 1.02 = 1.0098 > 1.0, so it goes first
    assert heads_to_remove(ent, [0, 1], 1) == {1: [0]}
    assert heads_to_remove(ent, [0, 1], 2) == {0: [0], 1: [0]}
    # 3 removable (1 + 2); the third removal skips layer 0's last head
    assert heads_to_remove(ent, [0, 1], 3) == {0: [0], 1: [0, 1]}
    with pytest.raises(ValueError, match="only 3 can go"):
        heads_to_remove(ent, [0, 1], 4)
    assert schedule(7, 3) == [3, 2, 2]


def test_head_surgery_equals_masked_unpruned_model_and_param_formula():
    model, x = model_and_input()
    remove = {0: [1, 3], 1: [0]}
    pruned = prune_heads(model, remove)
    assert pruned.cfg.heads_per_layer == [2, 3]
    # masked reference: the unpruned model with the removed heads' output-projection columns zeroed
    masked = build_model("vit_test", num_heads=4, num_classes=5).eval()
    masked.load_state_dict(model.state_dict())
    d = model.cfg.head_dim
    with torch.no_grad():
        for bi, heads in remove.items():
            for h in heads:
                masked.blocks[bi].attn.proj.weight[:, h * d : (h + 1) * d] = 0
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    C = model.cfg.embed_dim
    removed = 3
    assert count_params(model) - count_params(pruned) == removed * (3 * d * C + 3 * d + C * d)
    assert count_macs(pruned) < count_macs(model)


def masked_attention_forward(keep):
    """Reference attention: all keys projected, removed keys masked with -inf before the softmax."""

    def forward(self, x):
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        mask = torch.full((N,), float("-inf"))
        mask[keep] = 0.0
        attn = (logits + mask).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, H * d))

    return forward


def test_kv_surgery_equals_masked_unpruned_model():
    model, x = model_and_input()
    keep = [[0, 2, 5, 7, 30], [0, 1, 3, 4, 8, 9, 20]]
    pruned = prune_kv_tokens(model, keep)
    reference = build_model("vit_test", num_heads=4, num_classes=5).eval()
    reference.load_state_dict(model.state_dict())
    for blk, k in zip(reference.blocks, keep):
        blk.attn.forward = types.MethodType(masked_attention_forward(k), blk.attn)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=1e-5)
    assert count_macs(pruned) < count_macs(model)  # K/V projected only for kept tokens


def test_token_ranking_on_hand_built_scores():
    inf = float("inf")
    scores = [torch.tensor([inf, 3.0, 4.0, 0.0]), torch.tensor([inf, 1.0, 0.0, 0.0])]
    # layer 0 normalised: [.6, .8, 0]; layer 1 (x 0.97): [.97, 0, 0]; remove int(6 * 0.5) = 3 lowest -> zeros first
    keep = slots_to_keep(scores, [0, 1], 0.5)
    assert keep[0][0] == 0 and keep[1][0] == 0  # CLS always kept
    assert sum(len(k) - 1 for k in keep) == 3
    assert 3 not in keep[0] and keep[1] == [0, 1]
    with pytest.raises(ValueError, match="rate"):
        slots_to_keep(scores, [0, 1], 1.0)


def test_token_scores_are_taylor_scores():
    model, x = model_and_input()
    y = torch.tensor([0, 1, 2])
    scores = token_scores(model, [(x, y)])
    assert len(scores) == 2 and scores[0].shape == (33,) and torch.isinf(scores[0][0])
    assert (scores[0][1:] >= 0).all() and scores[0][1:].sum() > 0


def test_compressed_checkpoint_reloads_and_exports(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", num_heads=4, num_classes=6).eval())
    cfg = CompressConfig(
        keep_ratio=0.75,
        head_rate=0.5,
        token_rate=0.3,
        mlp_rate=0.5,
        rounds=2,
        epochs_per_round=1,
        arch_epochs=1,
        token_epochs=0,
        mlp_epochs=0,
        final_epochs=0,
        p=3,
        k=2,
    )
    result = compress(ckpt, tiny_dataset, tmp_path / "out", cfg, evaluate=False)
    model, _ = load_checkpoint(result["checkpoint"])
    assert sum(model.cfg.heads_per_layer) == 4 and result["after"]["gmacs"] < 0.6 * result["before"]["gmacs"]
    full = result["before"]["mlp_hidden_per_layer"]
    assert (
        result["after"]["mlp_hidden_per_layer"]
        == [h // 2 for h in full]
        == [b.mlp.fc1.out_features for b in model.all_blocks()]
    )
    assert [s["step"] for s in result["steps"]] == ["architecture", "heads", "heads", "mlp_units", "kv_tokens"]
    x = torch.randn(1, 3, *model.cfg.img_size)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-4)
    assert not any(k.endswith("mask") for k in model.state_dict())


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(head_rate=1.0), "--head-rate 1.0: must be >= 0 and < 1"),
        (dict(head_rate=-0.1), "--head-rate -0.1: must be >= 0 and < 1"),
        (dict(token_rate=1.5), "--token-rate 1.5: must be >= 0 and < 1"),
        (dict(keep_ratio=0.0), r"--keep-ratio 0.0: must be > 0 and <= 1"),
        (dict(mlp_rate=1.0), "--mlp-rate 1.0: must be >= 0 and < 1"),
        (dict(head_rate=0.9), "each of the 2 layers keeps one"),
    ],
)
def test_bad_ratios(tmp_path, tiny_dataset, kwargs, msg):
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", num_heads=4, num_classes=6).eval())
    with pytest.raises(MobileReIDError, match=msg):
        compress(ckpt, tiny_dataset, tmp_path / "out", CompressConfig(**kwargs), evaluate=False)


def test_cli_compress_rejects_cnn(tmp_path, tiny_dataset):
    ckpt = save_checkpoint(tmp_path / "cnn.pt", build_model("sclnet_test", num_classes=6).eval())
    r = runner.invoke(
        app, ["compress", str(ckpt), "--data", str(tiny_dataset), "--head-rate", "0.3", "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2 and "compression applies to ViT checkpoints" in r.output


def test_statistics_cover_the_whole_training_split_unless_capped(tiny_dataset):
    from mobilereid.compress.pipeline import Finetuner
    from mobilereid.data.datasets import load_dataset

    ds = load_dataset(tiny_dataset)
    teacher = build_model("vit_test", num_heads=4, num_classes=len(ds.train_labels())).eval()
    whole = Finetuner(ds, CompressConfig(), teacher)
    assert sorted(whole.stat_indices) == list(range(len(ds.train)))
    assert sum(len(x) for x in whole.stat_batches()) == len(ds.train)
    capped = Finetuner(ds, CompressConfig(stat_images=10), teacher)
    assert (
        len(capped.stat_indices) == 10 and capped.stat_indices[0] == 0 and capped.stat_indices[-1] == len(ds.train) - 1
    )
    with pytest.raises(MobileReIDError, match="--stat-images -1: must be >= 0"):
        check_cli(CompressConfig(stat_images=-1))


def _loss_of_one_step(monkeypatch, logits, feats, **kw) -> float:
    """The loss `train_one_epoch` reports for one batch of a student whose outputs are fixed (``logits``, ``feats``)
    with the ReID loss switched off: what the distillation and compatibility terms add alone."""
    import mobilereid.train as train_mod

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, cam=None):
            return [logits + self.w], [f + self.w for f in feats]

    monkeypatch.setattr(train_mod, "reid_loss", lambda lg, *a: (lg[0].sum() * 0.0, {"acc": torch.zeros(())}))
    batches = [(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))]
    model = Fixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return train_mod.train_one_epoch(model, batches, opt, lambda i: 0.0, **kw)["loss"]


def test_distillation_is_deit_soft_kl_teacher_to_student_per_class(monkeypatch):
    """KL(teacher || student) summed and divided by batch x classes (DeiT's soft distillation, used by AMG's code)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(4, 7), torch.randn(4, 7)
    p_t = F.softmax(t_logits, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s_logits, 1))).sum() / s_logits.numel()
    loss = _loss_of_one_step(monkeypatch, s_logits, [], teacher=lambda x, cam: (t_logits, None), distill_weight=1.0)
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_compatibility_term_is_one_minus_cosine_of_the_deployed_embeddings(monkeypatch):
    """compat_weight * mean(1 - cos(student's deployed embedding, teacher's)), through the BN-neck in eval mode."""
    import torch.nn.functional as F

    from mobilereid.losses import deployed_embedding

    torch.manual_seed(0)
    feats, t_emb = torch.randn(4, 5), torch.randn(4, 5)
    neck = torch.nn.BatchNorm1d(5)
    neck.running_mean.normal_()
    neck.running_var.uniform_(0.5, 2.0)
    deployed = (feats - neck.running_mean) / (neck.running_var + neck.eps).sqrt()
    expected = 2.0 * (1 - F.cosine_similarity(deployed, t_emb)).mean()
    loss = _loss_of_one_step(
        monkeypatch,
        torch.zeros(4, 3),
        [feats],
        teacher=lambda x, cam: (torch.zeros(4, 3), t_emb),
        distill_weight=0.0,
        compat_weight=2.0,
        student_embedding=lambda f: deployed_embedding(neck, f),
    )
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_architecture_changes_refuse_kv_pruned_checkpoints_and_offer_separate_windows(tmp_path, tiny_dataset):
    from mobilereid.compress.pipeline import with_architecture

    model, x = model_and_input()
    pruned = prune_kv_tokens(model, [list(range(20)), list(range(33))])
    with pytest.raises(MobileReIDError, match="key/value tokens are already pruned"):
        with_architecture(pruned, 0.5, "contrast", None, 0)
    torch.manual_seed(1)  # the new window embedding is initialised randomly: the same for both
    sep = with_architecture(model, None, "learned", 2, 1, "separate").eval()
    assert sep.cfg.window_weights == "separate" and sep.window_blocks is not None and len(sep.cfg.heads_per_layer) == 3
    torch.manual_seed(1)
    shared = with_architecture(model, None, "learned", 2, 1, "shared").eval()
    with torch.no_grad():  # separate copies start equal to the shared blocks
        torch.testing.assert_close(sep(x), shared(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(MobileReIDError, match="already runs 2 windows"):
        with_architecture(sep, None, "learned", 3, 1)
    r = runner.invoke(app, ["compress", "--help"])
    assert "--window-weights" in r.output and "--stat-images" in r.output


def test_mlp_unit_pruning_is_exact_surgery_and_scores_come_from_gradients():
    """Units whose fc2 column is zero contribute nothing: removing them leaves every output unchanged; the Taylor
    scores are zero for exactly those units (a_j * dL/da_j with dL/da_j = 0), so the score-based choice removes them;
    the pruned model is smaller and loads from its own config."""
    from mobilereid.compress.mlp import mlp_unit_scores, prune_mlp_units, units_to_keep
    from mobilereid.models import build_model
    from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("vit_test", num_classes=6, gelu="tanh").eval()
    hidden = model.cfg.mlp_hidden_per_layer[0]
    dead = list(range(0, hidden, 2))  # every other unit: its fc2 column is zero
    with torch.no_grad():
        for b in model.all_blocks():
            b.mlp.fc2.weight[:, dead] = 0.0
    x = torch.randn(4, 3, *model.cfg.img_size)
    y = torch.tensor([0, 1, 2, 3])
    scores = mlp_unit_scores(model, [(x, y)])
    assert all(float(s[dead].abs().max()) == 0.0 and float(s[1::2].min()) > 0.0 for s in scores)
    keep = units_to_keep(scores, 0.5)
    assert all(k == list(range(1, hidden, 2)) for k in keep)
    pruned = prune_mlp_units(model, keep)
    assert pruned.cfg.mlp_hidden_per_layer == [hidden // 2] * len(keep)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        back, _ = load_checkpoint(save_checkpoint(Path(tmp) / "p.pt", pruned))
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))
    with pytest.raises(ValueError, match="MLP rate"):
        units_to_keep(scores, 1.0)
