"""`--recipe` applies to the target it names, with any number of targets; it is never silently ignored."""

import pytest

from mobilereid.errors import ExportError
from mobilereid.export import export_checkpoint, resolve_targets
from mobilereid.export.recipes import recipe_paths_by_target
from mobilereid.models import build_model
from mobilereid.models.checkpoint import save_checkpoint


def recipe(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_each_recipe_goes_to_the_target_it_names(tmp_path):
    onnx = recipe(tmp_path, "o.toml", 'target = "onnx"\n[verify]\nimages = 3\n')
    tfl = recipe(tmp_path, "t.toml", 'target = "tflite"\n')
    assert recipe_paths_by_target(["onnx", "tflite"], [onnx, tfl]) == {"onnx": onnx, "tflite": tfl}
    nameless = recipe(tmp_path, "n.toml", "[verify]\nimages = 3\n")
    assert recipe_paths_by_target(["onnx"], nameless) == {"onnx": nameless}
    with pytest.raises(ExportError, match="names no target and 2 targets were asked for"):
        recipe_paths_by_target(["onnx", "tflite"], [nameless])
    with pytest.raises(ExportError, match="recipe is for target 'tflite', which this export does not produce"):
        recipe_paths_by_target(["onnx", "executorch"], [tfl])
    with pytest.raises(ExportError, match="a second recipe for target 'onnx'"):
        recipe_paths_by_target(["onnx", "tflite"], [onnx, onnx])
    assert resolve_targets("onnx,onnx") == ["onnx"]


def test_a_recipe_with_several_targets_reaches_the_export(tmp_path, tiny_dataset, monkeypatch):
    """Before: with more than one target (the default `all` too) the recipe was dropped and the shipped one used."""
    import mobilereid.export.run as export

    seen = {}
    monkeypatch.setattr(export, "_run_target", lambda job, t, r, *a: seen.setdefault(t, r["source"]) and [])
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("sclnet_test").eval())
    mine = recipe(tmp_path, "mine.toml", 'target = "tflite"\n[verify]\nimages = 4\n')
    export_checkpoint(ckpt, "all", tiny_dataset, tmp_path / "o", int8=True, recipe_path=[mine])
    assert (
        seen["tflite"] == str(mine)
        and seen["onnx"] != str(mine)
        and set(seen) == {"onnx", "executorch", "tflite", "edgetpu"}
    )
    with pytest.raises(
        ExportError, match="mine.toml: recipe is for target 'tflite', which this export does not produce"
    ):
        export_checkpoint(ckpt, "onnx,executorch", tiny_dataset, tmp_path / "o2", recipe_path=[mine])
    assert not (tmp_path / "o2").exists()
