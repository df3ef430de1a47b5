"""quant-sensitivity for ViTs: candidates through the litert-torch route (a file of its own, so that it runs beside
the CNN study rather than after it)."""

import pytest

from mobilereid.export import export_checkpoint


@pytest.mark.slow
def test_quant_sensitivity_lists_vit_candidates_per_runtime(tiny_dataset, tmp_path):
    """ViT candidates through the ViT's own TFLite route (full int8 / int16x8 / dynamic / fp32 from litert-torch), the
    fastest within budget chosen, a recipe that export takes. The ExecuTorch candidates share the CNN's measuring code
    (test_quant_sensitivity.py) and the static ViT plan is lowered in test_export.py; here only the ViT plan list is
    checked, to keep the suite's time."""
    import tomllib

    import torch

    from mobilereid.export.sensitivity import executorch_plans, run_sensitivity
    from mobilereid.models import build_model
    from mobilereid.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", gelu="tanh").eval())
    report = run_sensitivity(ckpt, tiny_dataset, tmp_path / "s", min_cosine=0.9, repeats=3, executorch=False)
    assert report["layers"] == [] and "litert-torch route" in report["not_covered"]
    lite = {c["variant"]: c for c in report["candidates"]}
    assert list(lite) == ["int8", "int16x8", "dynamic", "fp32"] and lite["fp32"]["cosine_mean"] > 0.999
    assert lite["int8"]["input_dtype"] == "int8" and lite["int16x8"]["input_dtype"] == "int16"
    assert report["chosen"] == min([c for c in report["candidates"] if c["cosine_mean"] >= 0.9], key=lambda c: c["p50_ms"])
    plans = executorch_plans("vit")
    assert [name for name, _, _ in plans] == ["int8 static, all XNNPACK ops", "int8 static linears",
                                             "int8 static linears, fc2 dynamic", "dynamic int8", "fp32"]
    assert plans[2][2] == {"mode": "static", "ops": ["linear"], "dynamic_modules": [r"mlp\.fc2$"]}
    tfl = tomllib.loads((tmp_path / "s" / "recipe_tflite.toml").read_text())
    assert tfl["converter"] == "litert-torch" and tfl["variants"] == [report["chosen"]["variant"]]
    r = export_checkpoint(ckpt, "tflite", tiny_dataset, tmp_path / "e", int8=True, recipe_path=tmp_path / "s" / "recipe_tflite.toml")[0]
    assert r["verification"]["cosine_mean"] >= 0.9
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 10_000
