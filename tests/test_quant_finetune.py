"""Quantization-consistency fine-tuning: a real PT2E QAT graph trains, and its weights come back as a checkpoint
that loads, exports and verifies."""

import pytest
import torch

from mobilereid.errors import CheckpointError, MobileReIDError
from mobilereid.models.checkpoint import load_checkpoint, save_checkpoint
from mobilereid.models.registry import build_model
from mobilereid.quant_finetune import QuantFinetuneConfig, quant_finetune


@pytest.mark.slow
def test_quant_finetune_writes_a_checkpoint_that_exports(tiny_dataset, tmp_path):
    from mobilereid.export import export_checkpoint

    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src.pt", build_model("sclnet_test", num_classes=6).eval())
    before, _ = load_checkpoint(source)
    cfg = QuantFinetuneConfig(epochs=2, p=3, k=2, lr=1e-3, guard_every=0)  # unguarded: the weights must move
    result = quant_finetune(source, tiny_dataset, tmp_path / "qft.pt", cfg)
    assert result["guard"]["active"] is False
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(0.0 < h["embedding_cosine"] <= 1.0 and h["cosine_to_start"] is None for h in result["history"])
    after, state = load_checkpoint(tmp_path / "qft.pt")
    assert state["extra"]["quant_finetune"]["consistency"] == cfg.consistency
    for key in ("metrics_before", "metrics_after"):  # the float model's accuracy before and after, on query/gallery
        assert 0.0 <= result[key]["mAP"] <= 1.0 and state["extra"][key] == result[key]
    sd0, sd1 = before.state_dict(), after.state_dict()
    assert sd0.keys() == sd1.keys()
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if sd0[k].is_floating_point())  # the weights were trained
    (r,) = export_checkpoint(
        tmp_path / "qft.pt", "tflite", tiny_dataset, tmp_path / "e", int8=True, recipe_path=_int8_recipe(tmp_path)
    )
    assert r["verification"]["runtime"] == "litert" and r["verification"]["cosine_mean"] > 0.9


def _int8_recipe(tmp_path):
    p = tmp_path / "int8.toml"
    p.write_text(
        'target = "tflite"\nfamily = "sclnet"\nvariants = ["int8"]\n\n[int8]\nactivation_ranges = "p90_minmax"\n\n'
        "[verify]\nimages = 8\nmin_cosine = 0.9\n"
    )
    return p


def test_guard_stops_below_the_floor_and_hands_on_the_last_passing_weights(tiny_dataset):
    """The guard on real weights and real scoring: a floor no model reaches (mAP 1.0, drop 0) fails the check, and
    what it hands on is the weights of the last passing check (here the starting weights), not the trained ones."""
    from mobilereid.data.datasets import load_dataset
    from mobilereid.quant_finetune import _Guard

    torch.manual_seed(0)
    model = build_model("sclnet_test", num_classes=6).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    guard = _Guard(
        model, load_dataset(tiny_dataset), {"mAP": 1.0}, QuantFinetuneConfig(epochs=3, max_map_drop=0.0, guard_every=2)
    )
    assert [guard.due(e) for e in (1, 2, 3)] == [False, True, True]  # every 2 epochs and after the last
    moved = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in start.items()}
    assert guard.check(2, moved) is False
    assert guard.record["kept_epoch"] == 0 and not guard.record["checks"][0]["passed"]
    guard.restore_or_keep(moved)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    passing = _Guard(model, load_dataset(tiny_dataset), {"mAP": 0.0}, QuantFinetuneConfig(epochs=2, guard_every=1))
    assert passing.check(1, moved) and passing.record["kept_epoch"] == 1
    passing.restore_or_keep(start)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in moved.items())


def test_guard_gives_up_far_below_the_start_and_the_stage_stops_there(tiny_dataset, tmp_path, monkeypatch):
    """A check more than give_up_drop below the start ends the stage early with the last passing weights; the last
    epoch's check never counts as giving up, and give_up_drop = 0 never gives up. The scores are scripted here
    (the real scoring is the test above): what is tested is the control flow of the stage."""
    import mobilereid.quant_finetune as qft
    from mobilereid.data.datasets import load_dataset
    from mobilereid.quant_finetune import _Guard

    model = build_model("sclnet_test", num_classes=6).eval()
    ds = load_dataset(tiny_dataset)
    scores = iter([0.42, 0.20])
    monkeypatch.setattr(qft, "_float_metrics", lambda m, d, c=None: {"mAP": next(scores), "rank1": 0.0})
    cfg = QuantFinetuneConfig(epochs=4, max_map_drop=5.0, guard_every=1, give_up_drop=10.0)
    guard = _Guard(model, ds, {"mAP": 0.5}, cfg)
    assert guard.check(1, model.state_dict()) is False and not guard.gave_up  # 0.08 down: fails, keeps going
    assert guard.check(2, model.state_dict()) is False and guard.gave_up and guard.record["gave_up_epoch"] == 2
    last = _Guard(model, ds, {"mAP": 0.5}, cfg)
    scores = iter([0.0])
    assert last.check(4, model.state_dict()) is False and not last.gave_up  # the last epoch: nothing left to stop
    never = _Guard(model, ds, {"mAP": 0.5}, QuantFinetuneConfig(epochs=4, guard_every=1, give_up_drop=0.0))
    scores = iter([0.0])
    never.check(1, model.state_dict())
    assert not never.gave_up
    with pytest.raises(MobileReIDError, match="give_up_drop"):
        quant_finetune(
            tiny_dataset, tiny_dataset, tmp_path / "o.pt", QuantFinetuneConfig(max_map_drop=1.0, give_up_drop=0.5)
        )

    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src.pt", build_model("sclnet_test", num_classes=6).eval())
    scores = iter([0.5, 0.1])  # before the stage, then the check after epoch 1
    result = quant_finetune(
        source,
        tiny_dataset,
        tmp_path / "qft.pt",
        QuantFinetuneConfig(epochs=4, p=3, k=2, guard_every=1, max_map_drop=5.0, give_up_drop=10.0),
    )
    assert len(result["history"]) == 1 and result["guard"]["gave_up_epoch"] == 1 and result["guard"]["kept_epoch"] == 0
    start, _ = load_checkpoint(source)
    after, _ = load_checkpoint(tmp_path / "qft.pt")
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in start.state_dict().items())  # the starting weights


@pytest.mark.slow
def test_vit_quant_finetune_fake_quantizes_linears_and_exports_static(tiny_dataset, tmp_path):
    from mobilereid.export import export_checkpoint

    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", num_classes=6, gelu="tanh").eval())
    before, _ = load_checkpoint(source)
    result = quant_finetune(
        source,
        tiny_dataset,
        tmp_path / "qft.pt",
        QuantFinetuneConfig(epochs=1, p=3, k=2, guard_every=0, compat_weight=10.0),
    )
    assert 0.0 < result["history"][0]["embedding_cosine"] < 1.0  # the fake-quantized pass differs from the float one
    assert 0.0 < result["history"][0]["cosine_to_start"] < 1.0  # and from the frozen starting model (compat term)
    after, _ = load_checkpoint(tmp_path / "qft.pt")
    assert not torch.equal(before.blocks[0].attn.qkv.weight, after.blocks[0].attn.qkv.weight)
    recipe = tmp_path / "r.toml"
    recipe.write_text('target = "executorch"\nvariants = ["int8"]\n[verify]\nmin_cosine = 0.9\n')
    (r,) = export_checkpoint(
        tmp_path / "qft.pt", "executorch", tiny_dataset, tmp_path / "e", int8=True, recipe_path=recipe
    )
    assert r["precision"] == "int8" and r["verification"]["passed"]


def test_quant_finetune_refuses_wrong_checkpoints(tiny_dataset, tmp_path):
    jpm = save_checkpoint(tmp_path / "jpm.pt", build_model("vit_test", num_classes=6, jpm=True))
    with pytest.raises(MobileReIDError, match="does not support JPM"):
        quant_finetune(jpm, tiny_dataset, tmp_path / "o.pt")
    other = save_checkpoint(tmp_path / "scl.pt", build_model("sclnet_test", num_classes=9))
    with pytest.raises(CheckpointError, match="trained for 9 identities"):
        quant_finetune(other, tiny_dataset, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


def test_vectorised_activation_fake_quant_matches_torchaos_fused_module():
    """The fine-tuning graph's activation fake quantization (fast_fake_quant.py) against torchao's fused module: the
    same running ranges, scale and zero point (torchao's kernel computes the scale in double, the observer in float:
    they may differ in the last bit), the same outputs and straight-through gradients (zero where clipped), over
    a sequence of inputs that moves the ranges; and in a real QAT graph every per-tensor activation quantizer is
    switched. (Whole graphs are not compared: a last-bit difference of one scale flips a rounding somewhere, and in
    an untrained network one step of one activation moves the embedding by a cosine of ~0.01.)"""
    import copy

    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    from mobilereid.fast_fake_quant import VectorisedActivationFakeQuantize, vectorise_activation_fake_quant
    from mobilereid.quant_finetune import _qat_graph, _set_quantization

    torch.manual_seed(0)
    reference = torch.nn.Sequential(
        FusedMovingAvgObsFakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.int8,
            qscheme=torch.per_tensor_affine,
        )
    )
    fast = copy.deepcopy(reference)
    assert vectorise_activation_fake_quant(fast) == 1 and type(fast[0]) is VectorisedActivationFakeQuantize
    for step in range(6):
        x = torch.randn(8, 16, 12, 6) * (1 + step) + step
        xs = [x.clone().requires_grad_() for _ in range(2)]
        outs = [m(v) for m, v in zip((reference, fast), xs)]
        grad = torch.randn_like(x)
        for out in outs:
            out.backward(grad)
        a, b = reference[0], fast[0]
        assert torch.equal(a.activation_post_process.min_val, b.activation_post_process.min_val)
        assert torch.equal(a.activation_post_process.max_val, b.activation_post_process.max_val)
        torch.testing.assert_close(a.scale, b.scale, rtol=1e-6, atol=0)
        assert torch.equal(a.zero_point, b.zero_point)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
        assert torch.equal(xs[0].grad, xs[1].grad)
        assert (xs[1].grad == 0).any() or step == 0  # clipped elements once the moving range lags the inputs
    _set_quantization(fast, False)
    assert torch.equal(fast(x), x)  # the float pass: neither observed nor quantized

    model = build_model("sclnet_test", num_classes=6)
    x = torch.randn(4, 3, *model.cfg.img_size)
    graph = _qat_graph(model, x, "sclnet")
    switched = [m for m in graph.modules() if type(m) is VectorisedActivationFakeQuantize]
    assert switched and not [
        m for m in graph.modules() if type(m) is FusedMovingAvgObsFakeQuantize and not m.is_per_channel
    ]
    reference_graph = copy.deepcopy(graph)
    for m in reference_graph.modules():
        if type(m) is VectorisedActivationFakeQuantize:
            m.__class__ = FusedMovingAvgObsFakeQuantize
    assert torch.equal(_float_pass(graph, x), _float_pass(reference_graph, x))
    assert not torch.equal(graph(x)[1][0], _float_pass(graph, x))  # quantization acts in the fine-tuning graph


def _float_pass(graph, x):
    from mobilereid.quant_finetune import _set_quantization

    _set_quantization(graph, False)
    with torch.no_grad():
        out = graph(x)[1][0]
    _set_quantization(graph, True)
    return out


def test_osnet_has_no_separate_neck_and_its_feature_is_compared_as_it_is():
    from mobilereid.quant_finetune import NECKS, _deployed_neck

    feat = torch.randn(3, 5)
    assert NECKS["osnet"] is None and torch.equal(_deployed_neck(None, None, None)(feat), feat)


@pytest.mark.parametrize("preset", ["resnet_test"])
def test_quant_finetune_takes_the_cnns_users_deploy(preset, tiny_dataset, tmp_path):
    """fast-reid's ResNet (BN neck heads.bottleneck.0, zero-initialised BN scales revived for QAT's folding)."""
    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src.pt", build_model(preset, num_classes=6).eval())
    before, _ = load_checkpoint(source)
    cfg = QuantFinetuneConfig(epochs=1, p=3, k=2, guard_every=0, compat_weight=1.0)
    result = quant_finetune(source, tiny_dataset, tmp_path / "qft.pt", cfg)
    h = result["history"][0]
    assert 0.0 < h["embedding_cosine"] <= 1.0 and 0.0 < h["cosine_to_start"] <= 1.0
    after, _ = load_checkpoint(tmp_path / "qft.pt")
    sd0, sd1 = before.state_dict(), after.state_dict()
    assert sd0.keys() == sd1.keys() and any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if sd0[k].is_floating_point())
