"""Calibration and verification images, through the project's own preprocessing.

``--calib DIR`` is either a dataset in the Market-1501 layout (calibration images come from
``bounding_box_train/``, held-out verification images from ``query/``, so the two never overlap) or any folder of
images (sorted; calibration takes evenly spaced files, verification the files in between).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.datasets import IMAGE_SUFFIXES
from ..data.preprocess import PreprocessSpec, preprocess_file
from ..errors import ExportError


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _spread(paths: list[Path], n: int) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


def calibration_files(calib_dir: str | Path, n_calib: int, n_verify: int) -> tuple[list[Path], list[Path]]:
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise ExportError(f"{calib_dir}: calibration folder does not exist")
    if (calib_dir / "bounding_box_train").is_dir():
        calib = _images_in(calib_dir / "bounding_box_train")
        verify = _images_in(calib_dir / "query") if (calib_dir / "query").is_dir() else []
        if not calib:
            raise ExportError(f"{calib_dir / 'bounding_box_train'}: calibration set holds no images")
        return _spread(calib, n_calib), _spread(verify or calib, n_verify)
    files = _images_in(calib_dir)
    if not files:
        raise ExportError(f"{calib_dir}: calibration set holds no images (.jpg, .jpeg, .png)")
    calib = _spread(files, n_calib)
    rest = [p for p in files if p not in set(calib)]
    return calib, _spread(rest or calib, n_verify)


def load_batch(paths: list[Path], spec: PreprocessSpec) -> np.ndarray:
    """(N, 3, H, W) float32; raises ExportError naming an unreadable image."""
    out = []
    for p in paths:
        try:
            out.append(preprocess_file(p, spec, "NCHW"))
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    return np.stack(out)
