import pytest
import torch

from mobilereid.errors import CheckpointError
from mobilereid.flops import count_macs, count_params
from mobilereid.models import PRESETS, build_model
from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint
from mobilereid.models.pretrained import load_pretrained_vit, resize_pos_embed
from mobilereid.models.vit import ViTReID, separate_window_weights

torch.manual_seed(0)


def rand_input(model, batch=2):
    return torch.randn(batch, 3, *model.cfg.img_size)


@pytest.mark.parametrize("name", list(PRESETS))
def test_output_shapes(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        feat = model(rand_input(model))
    assert feat.shape == (2, model.feature_dim)
    model.train()
    logits, feats = model(rand_input(model, 4))
    assert all(lg.shape == (4, 7) for lg in logits) and feats[0].shape == (4, model.feature_dim)


def reference_vit(model: ViTReID, x):
    """A plain ViT forward written from the paper equations with the model's weights (no elimination, no windows)."""
    sd = model.state_dict()
    cfg = model.cfg
    t = torch.nn.functional.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.stride)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    ln = lambda z, p: torch.nn.functional.layer_norm(z, (cfg.embed_dim,), sd[p + ".weight"], sd[p + ".bias"], 1e-6)
    lin = lambda z, p: z @ sd[p + ".weight"].T + sd[p + ".bias"]
    H, d = cfg.num_heads, cfg.embed_dim // cfg.num_heads
    for i in range(cfg.depth):
        b = f"blocks.{i}"
        qkv = lin(ln(t, b + ".norm1"), b + ".attn.qkv").reshape(len(x), -1, 3, H, d)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        a = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1)
        t = t + lin((a @ v).transpose(1, 2).reshape(len(x), -1, H * d), b + ".attn.proj")
        h = lin(ln(t, b + ".norm2"), b + ".mlp.fc1")
        t = t + lin(torch.nn.functional.gelu(h), b + ".mlp.fc2")
    cls = ln(t, "norm")[:, 0]
    bn = model.bottleneck
    return (cls - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def test_vit_without_elimination_and_windows_is_a_plain_vit():
    model = build_model("vit_test").eval()
    x = rand_input(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_vit(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(keep_ratio=0.7),
        dict(keep_ratio=0.5, scorer="contrast"),
        dict(windows=2, window_start=1),
        dict(windows=2, window_start=0, window_weights="separate"),
        dict(windows=2, keep_ratio=0.7, window_start=1),
        dict(gelu="tanh"),
        dict(camera_num=3, sie_camera=1),
        dict(stride=6),
        dict(jpm=True, camera_num=3, sie_camera=0),
        dict(jpm=True, keep_ratio=0.7, neck_feat="before"),
        dict(norm="batch"),
        dict(norm="batch", jpm=True, windows=1),
    ],
)
def test_torch_export_for_vit_options(options):
    model = build_model("vit_test", **options).eval()
    x = rand_input(model, 1)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PRESETS if n not in ("vit_test",)])
def test_torch_export_for_every_preset(name):
    model = build_model(name).eval()
    torch.export.export(model, (rand_input(model, 1),))


def test_patch_elimination_keeps_fixed_count_and_cuts_flops():
    base = build_model("vit_small")
    pruned = build_model("vit_small", keep_ratio=0.7)
    assert pruned.cfg.kept_per_group() == [round(128 * 0.7)]
    assert count_macs(pruned) <= 0.75 * count_macs(base)


def test_windows_keep_per_window_counts():
    m = build_model("vit_small", windows=4, keep_ratio=0.5, window_start=4)
    assert m.cfg.kept_per_group() == [16, 16, 16, 16]
    with torch.no_grad():
        assert m.eval()(rand_input(m, 1)).shape == (1, 384)


def test_separate_window_weights_start_equal_to_shared():
    shared = build_model("vit_test", windows=2, window_start=1).eval()
    sep = separate_window_weights(shared).eval()
    x = rand_input(shared)
    with torch.no_grad():
        torch.testing.assert_close(sep(x), shared(x))
    assert count_params(sep) > count_params(shared)


def test_published_flop_counts():
    assert count_macs(build_model("vit_base")) / 1e9 == pytest.approx(11.34, rel=0.01)
    assert count_macs(build_model("vit_base", stride=12)) / 1e9 == pytest.approx(18.87, rel=0.01)
    assert count_macs(build_model("vit_small")) / 1e9 == pytest.approx(2.93, rel=0.01)


def test_sclnet_size():
    m = build_model("sclnet", num_classes=751)
    assert 2.0e6 <= count_params(m) <= 2.5e6  # without the ID classifier
    assert count_params(m, exclude_classifier=False) - count_params(m) == 751 * 512 + 751 * 256  # deep + shallow heads
    assert count_macs(m) <= 1.1e9


def test_bad_options():
    with pytest.raises(ValueError, match="keep_ratio"):
        build_model("vit_test", keep_ratio=1.5)
    with pytest.raises(ValueError, match="norm must be 'layer' or 'batch'"):
        build_model("vit_test", norm="group")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("sclnet", img_size=(100, 50))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("vit_test", keep_ratio=0.75, windows=2, num_classes=5).eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded, state = load_checkpoint(path)
    x = rand_input(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert state["config"]["keep_ratio"] == 0.75


def test_batch_norm_vit_has_no_layernorm_and_round_trips_its_running_statistics(tmp_path):
    """norm = "batch": every LayerNorm's place (blocks, final norm) holds a TokenBatchNorm over the channels, pooled
    over batch and tokens, so that at inference the graph has no LayerNorm; the running statistics it learns in
    training are what a loaded checkpoint computes with."""
    from mobilereid.models.vit import TokenBatchNorm

    torch.manual_seed(0)
    model = build_model("vit_test", norm="batch", num_classes=4)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert isinstance(model.blocks[0].norm1, TokenBatchNorm) and isinstance(model.norm, TokenBatchNorm)
    x = rand_input(model, 6)
    tokens = torch.randn(6, 5, model.cfg.embed_dim)
    bn = model.blocks[0].norm1
    pooled = tokens.reshape(-1, tokens.shape[-1])
    want = (tokens - pooled.mean(0)) / torch.sqrt(pooled.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(bn(tokens), want, atol=1e-5, rtol=1e-4)  # training mode: batch x token statistics
    model.train()
    with torch.no_grad():
        model(x)
    assert float(model.norm.running_var.sub(1).abs().max()) > 0  # statistics moved
    model.eval()
    loaded, state = load_checkpoint(save_checkpoint(tmp_path / "bn.pt", model))
    assert state["config"]["norm"] == "batch"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bad_checkpoints(tmp_path):
    model = build_model("vit_test")
    path = save_checkpoint(tmp_path / "m.pt", model)
    state = torch.load(path, weights_only=True)

    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a mobilereid checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    wrong_keys = dict(state, state_dict={("x" + k): v for k, v in state["state_dict"].items()})
    torch.save(wrong_keys, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "keys.pt")
    wrong_shape = dict(state, state_dict=dict(state["state_dict"], cls_token=torch.zeros(1, 1, 3)))
    torch.save(wrong_shape, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape.*cls_token"):
        load_checkpoint(tmp_path / "shape.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "x", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_timm_format_state_dict_loads_with_identical_outputs(tmp_path):
    src = build_model("vit_test").eval()
    timm_sd = {("module." + k): v for k, v in src.state_dict().items() if not k.startswith("bottleneck")}
    timm_sd["module.head.weight"] = torch.randn(1000, 64)  # ImageNet head: dropped
    torch.save({"model": timm_sd}, tmp_path / "timm.pth")
    dst = build_model("vit_test").eval()
    info = load_pretrained_vit(dst, tmp_path / "timm.pth")
    assert "head.weight" not in info["skipped"] and info["loaded"] == len(timm_sd) - 1
    x = rand_input(src)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_pos_embed_resized_from_square_imagenet_grid(tmp_path):
    m = build_model("vit_test")
    sd = {k: v for k, v in m.state_dict().items()}
    sd["pos_embed"] = torch.randn(1, 1 + 14 * 14, 64)
    torch.save(sd, tmp_path / "deit.pth")
    load_pretrained_vit(m, tmp_path / "deit.pth")
    assert m.pos_embed.shape == (1, 1 + 8 * 4, 64)
    torch.testing.assert_close(m.pos_embed[:, 0], sd["pos_embed"][:, 0])
    same = resize_pos_embed(sd["pos_embed"], (14, 14))
    assert same is sd["pos_embed"]


def test_pretrained_rejects_wrong_width(tmp_path):
    torch.save(build_model("vit_tiny").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="core ViT weights do not fit"):
        load_pretrained_vit(build_model("vit_test"), tmp_path / "tiny.pth")


def test_topk_onehot_matches_torch_topk():
    from mobilereid.models.vit import topk_onehot

    scores = torch.randn(3, 20)
    scores[0, 5] = scores[0, 7]  # a tie: the lower index wins
    want = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :6]
    by_rank = topk_onehot(scores, 6, spatial=False)
    assert (by_rank.sum(-1) == 1).all()  # one token per row
    assert torch.equal(by_rank.float().argmax(-1), want)  # row r = the token of rank r
    spatial = topk_onehot(scores, 6)
    assert (spatial.sum(-1) == 1).all()
    assert torch.equal(spatial.float().argmax(-1), want.sort(dim=1).values)  # the same tokens, in image order


def test_kept_tokens_order_does_not_change_the_embedding_but_k_v_positions_follow_it(tmp_path):
    """Without K/V pruning the order of kept tokens is invisible (attention is permutation-equivariant, position
    embeddings come first); legacy checkpoints with patch elimination keep their score order when loaded."""
    from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    spatial = build_model("vit_test", keep_ratio=0.5, scorer="contrast").eval()
    rank = build_model("vit_test", keep_ratio=0.5, scorer="contrast", token_order="rank").eval()
    rank.load_state_dict(spatial.state_dict())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(spatial(x), rank(x), atol=1e-5)
    path = save_checkpoint(tmp_path / "old.pt", rank)
    state = torch.load(path, weights_only=True)
    del state["config"]["token_order"]  # as written before the option existed
    torch.save(state, path)
    assert load_checkpoint(path)[0].cfg.token_order == "rank"
