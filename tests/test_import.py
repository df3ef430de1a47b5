"""`mobilereid import`: TransReID / timm / DeiT state dicts reproduce their source's test feature exactly."""

import pytest
import torch
from transreid_reference import random_transreid_state_dict, transreid_forward
from typer.testing import CliRunner

from mobilereid.cli import app
from mobilereid.embeddings import preprocess_spec_for
from mobilereid.errors import CheckpointError
from mobilereid.models.checkpoint import load_checkpoint, read_checkpoint
from mobilereid.models.importers import ImportOptions, import_state_dict, import_weights

H, W = 64, 32  # stride 12, patch 16 -> a 5 x 2 grid


def _opts(**kw):
    base = dict(heads=2, img_size=(H, W), stride=12)
    base.update(kw)
    return ImportOptions(**base)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
@pytest.mark.parametrize("grid,size", [((5, 2), (64, 32)), ((5, 3), (64, 44))])  # 10 tokens, and 15 (shuffle pads)
def test_transreid_jpm_sie_stride12_matches_reference(tmp_path, neck_feat, grid, size):
    sd = random_transreid_state_dict(grid=grid, jpm=True, cameras=6)
    torch.save({("module." + k): v for k, v in sd.items()}, tmp_path / "transreid.pth")
    res = import_weights(tmp_path / "transreid.pth", tmp_path / "m.pt", _opts(neck_feat=neck_feat, img_size=size))
    assert (
        res.format == "transreid" and res.model.cfg.stride == 12 and res.model.cfg.jpm and res.model.cfg.camera_num == 6
    )
    assert "base.blocks.2.attn.qkv.weight" in res.unused and "base.norm.weight" in res.unused  # JPM never runs them
    model, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(3, 3, *size)
    cam = torch.tensor([0, 5, 2])
    with torch.no_grad():
        ref = transreid_forward(sd, x, cam, heads=2, stride=12, jpm=True, neck_feat=neck_feat)
        out = model(x, cam)
    assert out.shape == (3, 5 * 64) and model.feature_dim == 5 * 64
    assert (out - ref).abs().max() < 1e-4


def test_transreid_plain_and_small_variant_match_reference():
    sd = random_transreid_state_dict(jpm=False, cameras=0, qkv_bias=False, mlp=3)
    res = import_state_dict(sd, "plain.pth", _opts())
    assert not res.model.cfg.jpm and not res.model.cfg.qkv_bias and res.model.cfg.mlp_ratio == 3
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(
            res.model(x), transreid_forward(sd, x, None, heads=2, stride=12, jpm=False), atol=1e-4, rtol=0
        )


def test_transreid_vit_small_qk_scale_is_kept():
    """TransReID's vit_small: 768 wide, 8 blocks, 8 heads, attention scaled by 768^-0.5 (not head_dim^-0.5)."""
    sd = random_transreid_state_dict(
        C=768, depth=8, jpm=False, cameras=0, qkv_bias=False, mlp=3, patch=16, grid=(16, 8)
    )
    res = import_state_dict(sd, "small.pth", ImportOptions())
    assert res.model.preset == "vit_small_transreid" and res.model.cfg.stride == 16
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        ref = transreid_forward(sd, x, None, heads=8, stride=16, jpm=False, qk_scale=768**-0.5)
        assert (res.model(x) - ref).abs().max() < 1e-4


def test_checkpoint_carries_preprocessing_and_test_feature(tmp_path):
    torch.save(random_transreid_state_dict(jpm=True), tmp_path / "t.pth")
    import_weights(tmp_path / "t.pth", tmp_path / "m.pt", _opts())
    model, state = load_checkpoint(tmp_path / "m.pt")
    spec = preprocess_spec_for(model)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5) and (spec.height, spec.width) == (H, W)
    info = state["extra"]["imported"]
    assert info["format"] == "transreid" and "concat" in info["test_feature"] and len(info["source_sha256"]) == 64


def test_sie_model_needs_a_camera_or_a_baked_one():
    res = import_state_dict(random_transreid_state_dict(jpm=False), "t.pth", _opts())
    x = torch.randn(1, 3, H, W)
    with pytest.raises(ValueError, match="camera embedding"):
        res.model(x)
    res.model.cfg.sie_camera = 4
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), res.model(x, torch.tensor([4])))


def test_timm_and_distilled_deit_import(tmp_path):
    sd = random_transreid_state_dict(jpm=False, cameras=0, grid=(14, 14))
    timm = {k[len("base.") :]: v for k, v in sd.items() if k.startswith("base.") and not k.startswith("base.fc")}
    timm["head.weight"], timm["head.bias"] = torch.randn(1000, 64), torch.randn(1000)
    res = import_state_dict(timm, "timm.pth", ImportOptions(heads=2, img_size=(256, 128)))
    assert res.format == "timm" and res.model.cfg.pixel_mean == (0.5, 0.5, 0.5) and res.model.cfg.neck_feat == "before"
    assert res.model.pos_embed.shape == (1, 1 + 16 * 8, 64)
    # the same weights with a distillation token: its position row is dropped, the class token's row is kept
    deit = dict(timm)
    deit["dist_token"] = torch.randn(1, 1, 64)
    deit["pos_embed"] = torch.cat([timm["pos_embed"][:, :1], torch.randn(1, 1, 64), timm["pos_embed"][:, 1:]], 1)
    deit["head_dist.weight"] = torch.randn(1000, 64)
    res2 = import_state_dict(deit, "deit.pth", ImportOptions(heads=2, img_size=(256, 128)))
    assert res2.format == "deit" and res2.model.cfg.pixel_mean == (0.485, 0.456, 0.406)
    torch.testing.assert_close(res2.model.pos_embed, res.model.pos_embed)
    # bilinear resizing, as TransReID's resize_pos_embed
    grid = timm["pos_embed"][0, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    expect = torch.nn.functional.interpolate(grid, size=(16, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(res.model.pos_embed[0, 1:], expect.permute(0, 2, 3, 1).reshape(128, 64))


@pytest.mark.parametrize(
    "content,match",
    [
        ({"encoder.weight": torch.zeros(2)}, "cannot tell the format"),
        ({"base.cls_token": torch.zeros(1, 1, 64), "base.x": "not a tensor"}, "not a plain state dict"),
        ("just a string", "expected a state dict"),
    ],
)
def test_bad_weights_are_one_line_errors(tmp_path, content, match):
    torch.save(content, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=match):
        import_weights(tmp_path / "bad.pth", tmp_path / "m.pt", _opts())
    assert not (tmp_path / "m.pt").exists()


def test_wrong_shapes_and_flags_are_refused(tmp_path):
    sd = random_transreid_state_dict(jpm=False)
    with pytest.raises(CheckpointError, match="--cameras 3 but the weights hold 6"):
        import_state_dict(sd, "t.pth", _opts(cameras=3))
    with pytest.raises(CheckpointError, match="no JPM branches"):
        import_state_dict(sd, "t.pth", _opts(jpm=True))
    with pytest.raises(CheckpointError, match="expects 768 wide"):
        import_state_dict(sd, "t.pth", ImportOptions(model="vit_base", img_size=(H, W)))
    sd["base.blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="wrong shape"):
        import_state_dict(sd, "t.pth", _opts())


def test_cli_import_refuses_existing_output_and_reports(tmp_path):
    torch.save(random_transreid_state_dict(jpm=True), tmp_path / "t.pth")
    (tmp_path / "m.pt").write_bytes(b"user data")
    r = CliRunner().invoke(
        app,
        [
            "import",
            str(tmp_path / "t.pth"),
            "-o",
            str(tmp_path / "m.pt"),
            "--heads",
            "2",
            "--img-size",
            "64x32",
            "--stride",
            "12",
        ],
    )
    assert r.exit_code == 2 and "exists" in r.output and (tmp_path / "m.pt").read_bytes() == b"user data"
    r = CliRunner().invoke(
        app,
        [
            "import",
            str(tmp_path / "t.pth"),
            "-o",
            str(tmp_path / "n.pt"),
            "--heads",
            "2",
            "--img-size",
            "64x32",
            "--stride",
            "12",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "JPM on" in r.output and "6 SIE cameras" in r.output
    assert read_checkpoint(tmp_path / "n.pt")["config"]["jpm"] is True


@pytest.mark.slow
def test_imported_transreid_compresses_exports_int8_and_verifies(tmp_path, tiny_dataset):
    """JPM + SIE + stride 12 weights -> import -> compress (patch elimination, heads, K/V) -> INT8 with a baked camera
    (the LiteRT int16x8 model included: the class-token constant and LayerNorm rewrites apply to an imported model)."""
    from mobilereid.compress.pipeline import CompressConfig, compress
    from mobilereid.export import export_checkpoint
    from mobilereid.runtimes import read_sidecar

    sd = random_transreid_state_dict(C=64, depth=3, jpm=True, cameras=3, classes=6, grid=(5, 2))
    torch.save(sd, tmp_path / "t.pth")
    import_weights(tmp_path / "t.pth", tmp_path / "imported.pt", ImportOptions(heads=4, img_size=(64, 32), stride=12))
    cfg = CompressConfig(
        keep_ratio=0.8,
        head_rate=0.25,
        token_rate=0.3,
        rounds=1,
        epochs_per_round=1,
        arch_epochs=1,
        token_epochs=0,
        final_epochs=0,
        p=3,
        k=2,
    )
    result = compress(tmp_path / "imported.pt", tiny_dataset, tmp_path / "cmp", cfg, evaluate=False)
    assert result["after"]["gmacs"] < result["before"]["gmacs"]
    compressed, _ = load_checkpoint(result["checkpoint"])
    assert compressed.cfg.jpm and compressed.cfg.pixel_mean == (0.5, 0.5, 0.5) and compressed.feature_dim == 5 * 64
    with pytest.raises(Exception, match="--camera K"):
        export_checkpoint(result["checkpoint"], "onnx", tiny_dataset, tmp_path / "x")
    # the integer variants only (fp32 and dynamic of a ViT are exported by tests/test_export.py): user recipes laid
    # over the defaults, one per target
    (tmp_path / "et.toml").write_text('target = "executorch"\nvariants = ["int8"]\n')
    (tmp_path / "tfl.toml").write_text('target = "tflite"\nvariants = ["int16x8"]\n')
    results = export_checkpoint(
        result["checkpoint"],
        "executorch,tflite",
        tiny_dataset,
        tmp_path / "exp",
        int8=True,
        camera=1,
        recipe_path=[tmp_path / "et.toml", tmp_path / "tfl.toml"],
    )
    assert sorted((r["target"], r["precision"]) for r in results) == [
        ("executorch", "int8"),
        ("tflite", "int16x8"),
    ]  # the full-integer LiteRT ViT, from the integer-friendly graph of the imported model
    for r in results:
        meta = read_sidecar(r["artifact"])
        assert meta["camera"]["baked_camera"] == 1 and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]
        assert meta["model"]["embedding_dim"] == 5 * 64
        assert r["verification"]["passed"], (r["artifact"].name, r["verification"])
    integer = next(r for r in results if r["precision"] == "int16x8")
    assert read_sidecar(integer["artifact"])["graph_rewrites"][0] == "block 0 class-token LayerNorm as a constant"


def test_sie_model_on_a_dataset_with_more_cameras_is_refused(tiny_dataset):
    from mobilereid.data.datasets import load_dataset
    from mobilereid.embeddings import extract_features
    from mobilereid.errors import MobileReIDError
    from mobilereid.models import build_model

    model = build_model("vit_test", camera_num=2).eval()
    ds = load_dataset(tiny_dataset, need_train=False)  # 3 cameras
    with pytest.raises(
        MobileReIDError, match=r"camera 2 \(0-based\), but the model's SIE camera embedding knows cameras 0..1"
    ):
        extract_features(model, ds.query, preprocess_spec_for(model))
