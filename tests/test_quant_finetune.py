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
    cfg = QuantFinetuneConfig(epochs=2, p=3, k=2, lr=1e-3)
    result = quant_finetune(source, tiny_dataset, tmp_path / "qft.pt", cfg)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(0.0 < h["embedding_cosine"] <= 1.0 for h in result["history"])
    after, state = load_checkpoint(tmp_path / "qft.pt")
    assert state["extra"]["quant_finetune"]["consistency"] == cfg.consistency
    for key in ("metrics_before", "metrics_after"):  # the float model's accuracy before and after, on query/gallery
        assert 0.0 <= result[key]["mAP"] <= 1.0 and state["extra"][key] == result[key]
    sd0, sd1 = before.state_dict(), after.state_dict()
    assert sd0.keys() == sd1.keys()
    assert any(not torch.equal(sd0[k], sd1[k]) for k in sd0 if sd0[k].is_floating_point())  # the weights were trained
    (r,) = export_checkpoint(tmp_path / "qft.pt", "tflite", tiny_dataset, tmp_path / "e", int8=True,
                             recipe_path=_int8_recipe(tmp_path))
    assert r["verification"]["runtime"] == "litert" and r["verification"]["cosine_mean"] > 0.9


def _int8_recipe(tmp_path):
    p = tmp_path / "int8.toml"
    p.write_text('target = "tflite"\nfamily = "sclnet"\nvariants = ["int8"]\n\n[int8]\nactivation_ranges = "p90_minmax"\n\n'
                 '[verify]\nimages = 8\nmin_cosine = 0.9\n')
    return p


def test_quant_finetune_refuses_wrong_checkpoints(tiny_dataset, tmp_path):
    vit = save_checkpoint(tmp_path / "vit.pt", build_model("vit_test", num_classes=6))
    with pytest.raises(MobileReIDError, match="supports SCL-net"):
        quant_finetune(vit, tiny_dataset, tmp_path / "o.pt")
    other = save_checkpoint(tmp_path / "scl.pt", build_model("sclnet_test", num_classes=9))
    with pytest.raises(CheckpointError, match="trained for 9 identities"):
        quant_finetune(other, tiny_dataset, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()
