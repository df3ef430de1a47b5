"""The one preprocessing reference shared by training, export calibration, the evaluator and the Android app.

numpy + Pillow only (no torch), because the on-device evaluator imports this very file. The Kotlin core of the
Android demo re-implements exactly these steps and is checked against golden vectors written from here, so every
step is spelled out rather than delegated to a library whose resampling differs between languages:

1. decode to 8-bit RGB (colour order RGB, never BGR);
2. resize to (height, width) with plain bilinear interpolation, half-pixel centres, edge clamping and *no*
   antialiasing (what `torch.nn.functional.interpolate(..., align_corners=False)` and TFLite's
   `half_pixel_centers=True` do), computed in float32;
3. scale to [0, 1] by 1/255, subtract the mean and divide by the std per channel (ImageNet statistics by default,
   because TransReID/timm checkpoints expect them);
4. layout NCHW for torch/ExecuTorch/ONNX artifacts, NHWC for TFLite artifacts (see `to_layout`);
5. for integer-input artifacts: q = clip(round_half_to_even(x / scale) + zero_point, qmin, qmax).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def checked_pixel_stats(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A model config's input normalisation as float triples; ValueError unless 3 values each and every std > 0."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"pixel_mean/pixel_std need 3 values each (std > 0), got {mean} / {std}")
    return mean, std


@dataclass(frozen=True)
class PreprocessSpec:
    """What an artifact expects as input; stored in every metadata sidecar."""

    height: int = 256
    width: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    colour_order: str = "RGB"
    resize: str = "bilinear_half_pixel_no_antialias"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        keys = {"height", "width", "mean", "std", "scale", "colour_order", "resize"}
        kw = {k: d[k] for k in keys if k in d}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        return cls(**kw)


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to a uint8 HxWx3 RGB array; raises OSError/ValueError naming the file."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises several types; name the file in one message
        raise ValueError(f"{path}: cannot decode image ({exc})") from None


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWxC array to float32 (half-pixel centres, edge clamping, no antialias).

    Only the source rows and columns that the output samples are gathered, and only those are made float32:
    converting a 13000x13000 photo whole cost 2 GB, and the numbers are the same (uint8 -> float32 is exact)."""
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (height, width):
        return img.astype(np.float32)

    def axis(dst: int, size: int):
        pos = (np.arange(dst, dtype=np.float32) + 0.5) * (np.float32(size) / np.float32(dst)) - 0.5
        pos = np.clip(pos, 0.0, size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(height, src_h)
    x0, x1, wx = axis(width, src_w)
    rows0, rows1 = img[y0], img[y1]  # (height, src_w, C), still in the input dtype

    def pick(rows, cols):
        return rows[:, cols].astype(np.float32)

    top = pick(rows0, x0) * (1 - wx)[None, :, None] + pick(rows0, x1) * wx[None, :, None]
    bottom = pick(rows1, x0) * (1 - wx)[None, :, None] + pick(rows1, x1) * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def normalize(img_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Float HxWx3 in 0..255 -> normalised float32 HxWx3."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((img_hwc.astype(np.float32) * np.float32(spec.scale)) - mean) / std


def preprocess_array(rgb: np.ndarray, spec: PreprocessSpec, layout: str = "NCHW") -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 tensor of shape (3,H,W) or (H,W,3)."""
    x = normalize(resize_bilinear(rgb, spec.height, spec.width), spec)
    return to_layout(x, layout)


def preprocess_file(path: str | Path, spec: PreprocessSpec, layout: str = "NCHW") -> np.ndarray:
    return preprocess_array(load_rgb(path), spec, layout)


def to_layout(x_hwc: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NCHW":
        return np.ascontiguousarray(x_hwc.transpose(2, 0, 1))
    if layout == "NHWC":
        return np.ascontiguousarray(x_hwc)
    raise ValueError(f"unknown layout {layout!r} (expected NCHW or NHWC)")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """Affine quantization with round-half-to-even, as TFLite and ExecuTorch quantize inputs."""
    info = np.iinfo(np.dtype(dtype))
    q = np.round(x.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
