"""Error of one tensor against its float counterpart (numpy only).

SQNR in dB (10 log10 of signal power over error power, the measure ExecuTorch's Inspector and ai-edge-quantizer
report), cosine, max absolute error, and for integer tensors the max error in LSB of the tensor's own scale: an
error of a few LSB is what rounding gives; hundreds mean a range problem (clipping or a too-coarse scale).
"""

from __future__ import annotations

import numpy as np


def tensor_error(actual: np.ndarray, expected: np.ndarray, scale: float | None = None) -> dict:
    a = np.asarray(actual, np.float64).ravel()
    e = np.asarray(expected, np.float64).ravel()
    err = a - e
    signal, noise = float((e * e).sum()), float((err * err).sum())
    norm = float(np.linalg.norm(a) * np.linalg.norm(e))
    out = {
        "sqnr_db": float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf")),
        "cosine": float(a @ e / norm) if norm > 0 else (1.0 if noise == 0 else 0.0),
        "max_abs_error": float(np.abs(err).max()) if err.size else 0.0,
    }
    if scale:
        out["max_error_lsb"] = float(np.abs(err).max() / scale) if err.size else 0.0
    return out


def mean_over_images(rows: list[dict]) -> dict:
    """Per-image errors of one tensor -> one row: mean SQNR and cosine, worst max error."""
    keys = rows[0].keys()
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows], np.float64)
        out[k] = (
            float(vals.max())
            if k.startswith("max")
            else float(np.mean(vals[np.isfinite(vals)]) if np.isfinite(vals).any() else vals[0])
        )
    return out
