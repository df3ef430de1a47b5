"""quant-sensitivity for ViTs: candidates through the litert-torch route (a file of its own, so that it runs beside
the CNN study rather than after it)."""

import pytest

from mobilereid.export import export_checkpoint


@pytest.mark.slow
def test_quant_sensitivity_lists_vit_candidates_per_runtime(tiny_dataset, tmp_path):
    """ViT candidates through the ViT's own TFLite route (litert-torch): dynamic and fp32, then per range rule full
    int8, int16x8, int8 with int16 for one op type at a time and, in the order of those gains, for more types until
    the budget is met; the fastest within budget chosen, the fastest *full-integer* one chosen apart, both written as
    recipes that export takes. The budget (0.995) is above full int8 on this random model, so the search runs. The
    ExecuTorch candidates share the CNN's measuring code (test_quant_sensitivity.py) and the static ViT plan is
    lowered in test_export.py; here only the ViT plan list is checked, to keep the suite's time."""
    import tomllib

    import torch

    from mobilereid.export.sensitivity import SEARCH_RULES, executorch_plans, run_sensitivity
    from mobilereid.models import build_model
    from mobilereid.models.checkpoint import save_checkpoint
    from mobilereid.runtimes import read_sidecar

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", gelu="tanh").eval())
    budget = 0.995
    report = run_sensitivity(ckpt, tiny_dataset, tmp_path / "s", min_cosine=budget, repeats=3, executorch=False)
    assert report["layers"] == [] and "litert-torch route" in report["not_covered"]
    cands = report["candidates"]
    assert [c["name"] for c in cands[:2]] == ["dynamic", "fp32"] and cands[1]["cosine_mean"] > 0.999
    for rule in SEARCH_RULES:
        mine = [c for c in cands if c["activation_ranges"] == rule]
        int8, int16x8 = mine[0], mine[1]
        assert (int8["variant"], int8["int16_ops"], int8["input_dtype"]) == ("int8", [], "int8")
        assert (int16x8["variant"], int16x8["input_dtype"]) == ("int16x8", "int16")
        singles = [c for c in mine[2:] if len(c["int16_ops"]) == 1 or c["name"].startswith("int8, layout ops")]
        alone = {c["int16_ops"][0] for c in singles if len(c["int16_ops"]) == 1}
        assert {"ADD", "SOFTMAX", "FULLY_CONNECTED", "GELU", "MUL"} <= alone and "RESHAPE" not in alone
        # the search: each step adds the next best single unit, and it stops at the first model within budget
        gains = [c for c in sorted(singles, key=lambda c: -c["cosine_mean"]) if c["cosine_mean"] > int8["cosine_mean"]]
        steps = mine[2 + len(singles) :]
        chosen = list(gains[0]["int16_ops"]) if gains else []
        for k, step in enumerate(steps):
            chosen += gains[k + 1]["int16_ops"]
            assert step["int16_ops"] == chosen
        tried = [gains[0]] + steps if gains else []
        assert all(c["cosine_mean"] < budget for c in tried[:-1])
        # integer-friendly graph: nothing left in float in any static candidate of this LayerNorm ViT
        assert all(c["full_integer"] and c["float_ops_left"] == {} for c in mine)
    within = [c for c in cands if c["cosine_mean"] >= budget]
    assert report["chosen"] == min(within, key=lambda c: c["p50_ms"])
    integer = report["chosen_full_integer"]
    assert integer == min([c for c in within if c["full_integer"]], key=lambda c: c["p50_ms"])
    plans = executorch_plans("vit")
    assert [name for name, _, _ in plans] == [
        "int8 static, all XNNPACK ops",
        "int8 static linears",
        "int8 static linears, fc2 dynamic",
        "dynamic int8",
        "fp32",
    ]
    assert plans[2][2] == {"ops": ["linear"], "dynamic_modules": [r"mlp\.fc2$"]}
    tfl = tomllib.loads((tmp_path / "s" / "recipe_tflite.toml").read_text())
    assert tfl["converter"] == "litert-torch" and tfl["variants"] == [report["chosen"]["variant"]]
    r = export_checkpoint(
        ckpt, "tflite", tiny_dataset, tmp_path / "e", int8=True, recipe_path=tmp_path / "s" / "recipe_tflite.toml"
    )[0]
    assert r["verification"]["cosine_mean"] >= 0.99
    rec = tomllib.loads((tmp_path / "s" / "recipe_tflite_integer.toml").read_text())
    assert rec["variants"] == [integer["variant"]] and rec["int8"].get("int16_ops", []) == integer["int16_ops"]
    assert rec["int8"].get("activation_ranges", "default") == integer["activation_ranges"]
    r = export_checkpoint(
        ckpt,
        "tflite",
        tiny_dataset,
        tmp_path / "i",
        int8=True,
        recipe_path=tmp_path / "s" / "recipe_tflite_integer.toml",
    )[0]
    assert r["verification"]["passed"] and r["float_ops_left"] == {}
    rewrites = read_sidecar(r["artifact"])["graph_rewrites"]
    assert rewrites[0] == "block 0 class-token LayerNorm as a constant" and rewrites[1].startswith(
        "5 LayerNorm squares as MUL"
    )
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 10_000
