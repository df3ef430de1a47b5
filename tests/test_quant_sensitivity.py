"""quant-sensitivity: per-layer INT8 error from the real QuantizationDebugger, measured candidates for LiteRT and
ExecuTorch, and the recipes it writes going through export (its own file: the longest test, run beside the others)."""

import json

import pytest

from mobilereid.export import export_checkpoint
from mobilereid.runtimes import read_sidecar


@pytest.mark.slow
def test_quant_sensitivity_ranks_layers_and_its_recipe_exports(sclnet_ckpt, tiny_dataset, tmp_path, monkeypatch):
    """Per-layer errors from the real QuantizationDebugger, measured candidates, and a chosen recipe that export uses;
    keeping the worst layer in float gives a float-IO model that still verifies."""
    import tomllib

    from mobilereid.export import sensitivity
    from mobilereid.export.sensitivity import executorch_plans, run_sensitivity

    # ExecuTorch: every CNN plan is listed, two of them are lowered and measured here (each lowering is ExecuTorch's
    # Python passes, ~15 s; the range rules and the dynamic mode go through the same `lower` in tests/test_export.py)
    plans = executorch_plans("sclnet")
    assert [p[0] for p in plans] == [
        "int8, default ranges",
        "int8, mean_minmax ranges",
        "int8, p90_minmax ranges",
        "dynamic int8",
        "fp32",
    ]
    monkeypatch.setattr(sensitivity, "executorch_plans", lambda family: [plans[0], plans[-1]])

    report = run_sensitivity(sclnet_ckpt, tiny_dataset, tmp_path / "s", repeats=5, ks=(1,))
    layers = report["layers"]
    assert len(layers) > 5 and all(a["rmse_over_scale"] >= b["rmse_over_scale"] for a, b in zip(layers, layers[1:]))
    names = [c["name"] for c in report["candidates"]]
    assert names == [
        "int8, default ranges",
        "int8, mean_minmax ranges",
        "int8, p90_minmax ranges",
        "int8, 1 worst layer(s) float",
        "dynamic",
        "fp32",
    ]
    kept = report["candidates"][3]
    assert kept["float_nodes"] == [layers[0]["tensor"]] and kept["input_dtype"] == "float32"
    assert {c["input_dtype"] for c in report["candidates"][:3]} == {"int8"}
    ok = [c for c in report["candidates"] if c["cosine_mean"] >= report["drift_budget"]]
    assert report["chosen"] == min(ok, key=lambda c: c["p50_ms"])
    # ExecuTorch candidates: lowered, run in the ExecuTorch runtime, chosen by the same rule, written as a recipe
    et = report["executorch"]
    assert [c["name"] for c in et["candidates"]] == ["int8, default ranges", "fp32"]
    fp32 = et["candidates"][-1]
    assert fp32["cosine_mean"] > 0.999 and fp32["delegated_subgraphs"] >= 1
    assert 0 < et["candidates"][0]["size_bytes"] < fp32["size_bytes"] * 0.6  # static int8
    assert et["chosen"] == min(
        [c for c in et["candidates"] if c["cosine_mean"] >= report["drift_budget"]], key=lambda c: c["p50_ms"]
    )
    et_recipe = tomllib.loads((tmp_path / "s" / "recipe_executorch.toml").read_text())
    assert et_recipe["variants"] == [et["chosen"]["variant"]] and "mode" not in et_recipe["int8"]
    # (the written ExecuTorch recipe is a recipe like the TFLite one below, which goes through export: one export of
    # the two keeps the suite within its time)
    assert (
        0.0 < report["noise_cosine_1_grey_level"] <= 1.0
        and "one grey level" in (tmp_path / "s" / "sensitivity.md").read_text()
    )
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 10_000 and "Worst layers" in (
        tmp_path / "s" / "sensitivity.md"
    ).read_text()
    chosen = tomllib.loads((tmp_path / "s" / "recipe_tflite.toml").read_text())
    assert chosen["variants"] == [report["chosen"]["variant"]]
    assert chosen["int8"]["activation_ranges"] == report["chosen"]["activation_ranges"]
    # a recipe that keeps the worst layer in float, as the tool writes it, goes through export and verification
    recipe = tmp_path / "mixed.toml"
    recipe.write_text(
        (tmp_path / "s" / "recipe_tflite.toml")
        .read_text()
        .replace('variants = ["' + report["chosen"]["variant"] + '"]', 'variants = ["int8"]')
        .replace("float_nodes = []", "float_nodes = " + json.dumps([layers[0]["tensor"]]))
    )
    r = export_checkpoint(sclnet_ckpt, "tflite", tiny_dataset, tmp_path / "e", int8=True, recipe_path=recipe)[0]
    assert r["verification"]["passed"] and read_sidecar(r["artifact"])["input"]["dtype"] == "float32"
