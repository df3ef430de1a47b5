"""Folding OSNet's conv3 + downsample into one convolution (mobilereid/export/residual_fold.py): exact in float,
left alone where InstanceNorm sits, and exported to TFLite Micro where it verifies in the micro interpreter."""

from __future__ import annotations

import torch

from mobilereid.export.residual_fold import FoldedProjectionBlock, fold_residual_projections
from mobilereid.models import build_model


def _with_statistics(model):
    torch.manual_seed(1)
    for m in model.modules():  # BN statistics and scales away from their defaults, so the folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def test_folded_blocks_compute_what_the_blocks_did():
    torch.manual_seed(0)
    model = _with_statistics(build_model("osnet_x0_25", num_classes=5))
    folded, n = fold_residual_projections(model)
    assert n == 3 and sum(isinstance(m, FoldedProjectionBlock) for m in folded.modules()) == 3
    x = torch.randn(2, 3, *model.cfg.img_size)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, FoldedProjectionBlock) for m in model.modules())  # the user's model is untouched


def test_instance_norm_blocks_are_left_alone():
    from mobilereid.models.osnet import OSBlock

    torch.manual_seed(0)
    model = build_model("osnet_ibn_x1_0", num_classes=5).eval()
    _, n = fold_residual_projections(model)
    projecting = [m for m in model.modules() if isinstance(m, OSBlock) and m.downsample is not None]
    with_in = [b for b in projecting if b.IN is not None]
    assert with_in and n == len(projecting) - len(with_in)


def test_folded_osnet_exports_to_tflite_micro_and_verifies(tiny_dataset, tmp_path):
    from mobilereid.export import export_checkpoint
    from mobilereid.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "o.pt", _with_statistics(build_model("osnet_test", num_classes=6)))
    recipe = tmp_path / "fold.toml"
    recipe.write_text(
        'target = "tflm"\nfamily = "osnet"\nvariants = ["int8"]\nboard = "stm32h7"\n\n[int8]\n'
        'activation_ranges = "p90_minmax"\ncalibration_images = 16\n\n[micro]\nfold_projections = true\n'
        "reorder_operators = false\n\n[verify]\nimages = 4\nmin_cosine = 0.9\n"
    )
    (r,) = export_checkpoint(ckpt, "tflm", tiny_dataset, tmp_path / "e", int8=True, recipe_path=recipe)
    assert r["tflm"]["folded_projections"] == 3 and r["verification"]["passed"]
    assert r["tflm"]["slim_outputs_identical"] and r["tflm"]["max_output_lsb_vs_litert_reference_kernels"] <= 1
