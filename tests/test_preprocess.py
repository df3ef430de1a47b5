import numpy as np
import pytest
import torch

from mobilereid.data.preprocess import PreprocessSpec, dequantize, preprocess_array, quantize, resize_bilinear


@pytest.mark.parametrize("src,dst", [((37, 19), (256, 128)), ((300, 140), (64, 32)), ((64, 32), (64, 32))])
def test_resize_matches_torch_bilinear_half_pixel(src, dst):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = resize_bilinear(img, *dst)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(2, 0, 1)[None].float(),
        size=dst,
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )
    np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-3)


def test_preprocess_layouts_and_normalisation():
    spec = PreprocessSpec(height=4, width=2)
    img = np.full((4, 2, 3), 255, np.uint8)
    chw = preprocess_array(img, spec, "NCHW")
    hwc = preprocess_array(img, spec, "NHWC")
    assert chw.shape == (3, 4, 2) and hwc.shape == (4, 2, 3)
    np.testing.assert_allclose(chw[:, 0, 0], (1 - np.array(spec.mean)) / np.array(spec.std), rtol=1e-6)
    assert spec == PreprocessSpec.from_dict(spec.to_dict())


def test_quantize_round_trip_and_clipping():
    x = np.array([-100.0, -0.5, 0.0, 0.25, 0.5, 100.0], np.float32)
    q = quantize(x, 0.5, 1)
    assert q.tolist() == [-128, 0, 1, 1, 2, 127]  # 0.25/0.5=0.5 rounds half to even -> 0, then +1
    np.testing.assert_allclose(dequantize(q, 0.5, 1)[1:5], [-0.5, 0.0, 0.0, 0.5])
