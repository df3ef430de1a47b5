"""Hand-crafted floor for any dataset: colour histograms of horizontal stripes (numpy only).

Each image is split into 6 horizontal stripes (the classic LOMO/ELF-style body-part layout); each stripe gets a
joint 8x8x8 RGB histogram (L1-normalised, square-rooted: the Hellinger kernel), concatenated into one descriptor
scored with cosine distance. A trained network must beat this to be worth anything.
"""

from __future__ import annotations

import numpy as np

from .data.datasets import Sample
from .data.preprocess import load_rgb, resize_bilinear


def stripe_histogram(rgb: np.ndarray, stripes: int = 6, bins: int = 8) -> np.ndarray:
    img = resize_bilinear(rgb, 128, 64).astype(np.uint8)
    q = (img // (256 // bins)).astype(np.int64)
    codes = q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]
    feats = []
    for rows in np.array_split(np.arange(img.shape[0]), stripes):
        h = np.bincount(codes[rows].ravel(), minlength=bins**3).astype(np.float32)
        feats.append(np.sqrt(h / max(h.sum(), 1)))
    return np.concatenate(feats)


def histogram_features(samples: list[Sample]) -> np.ndarray:
    return np.stack([stripe_histogram(load_rgb(s.path)) for s in samples])
