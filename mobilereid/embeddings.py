"""Embeddings of a torch model and their retrieval scores: the float reference every stage and report uses.

Train, compress, quant-finetune, export (float references for verification) and evaluate (reference and baseline
models) all embed through :func:`extract_features` and score through :func:`rank_metrics` (``metrics.rank_summary``:
cosine distance, Market-1501 protocol), so a float number means the same wherever it is printed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from .compute import CPU, Compute, exact_matmuls
from .console import progress
from .data.datasets import ReIDDataset
from .data.preprocess import PreprocessSpec
from .data.torchdata import ReIDImages
from .errors import MobileReIDError
from .metrics import rank_summary
from .models.vit import fused_attention


def preprocess_spec_for(model) -> PreprocessSpec:
    """The input a model's weights expect: its size and the normalisation recorded in its config (ImageNet
    statistics unless the model was imported with others, e.g. TransReID's mean = std = 0.5)."""
    h, w = model.cfg.img_size
    kw = {k: tuple(getattr(model.cfg, f"pixel_{k}")) for k in ("mean", "std") if hasattr(model.cfg, f"pixel_{k}")}
    return PreprocessSpec(height=h, width=w, **kw)


@torch.no_grad()
def extract_features(
    model,
    samples,
    spec: PreprocessSpec,
    batch_size: int = 64,
    desc: str | None = None,
    flip: bool = False,
    compute: Compute = CPU,
) -> np.ndarray:
    """Embeddings of `samples`; with ``flip`` the mean of each image's and its mirror's (as
    mobilereid/device/evaluator.py).

    Runs on ``compute.device`` in fp32 with exact matmuls (no TF32, no autocast): these are reference numbers for
    metrics and drift; attention goes through the fused kernel, which computes the same function."""
    model.eval()
    if getattr(model, "uses_camera", False) and samples:
        n, top = model.cfg.camera_num, max(s.camid for s in samples)
        if top >= n:
            raise MobileReIDError(
                f"{samples[0].path.parent}: images of camera {top} (0-based), but the model's SIE "
                f"camera embedding knows cameras 0..{n - 1}"
            )
    loader = DataLoader(
        ReIDImages(samples, spec, cache=False),
        batch_size=batch_size,
        shuffle=False,
        num_workers=compute.workers,
        pin_memory=compute.cuda,
    )
    feats = []
    with (
        progress(desc or f"embedding {len(samples)} images", len(samples)) as advance,
        exact_matmuls(),
        fused_attention(model),
    ):
        for x, _, cam in loader:
            x, cam = compute.put(x), compute.put(cam)
            run = (lambda v: model(v, cam)) if getattr(model, "uses_camera", False) else model
            out = run(x) if not flip else (run(x) + run(x.flip(3))) / 2
            feats.append(out.float().cpu().numpy())
            advance(len(x))
    return np.concatenate(feats)


def evaluate_model(model, ds: ReIDDataset, spec: PreprocessSpec | None = None, compute: Compute = CPU) -> dict:
    """Float evaluation on query/gallery: Rank-1/5/10, mAP, mINP (fractions)."""
    spec = spec or preprocess_spec_for(model)
    q = extract_features(model, ds.query, spec, desc=f"embedding {len(ds.query)} query images", compute=compute)
    g = extract_features(model, ds.gallery, spec, desc=f"embedding {len(ds.gallery)} gallery images", compute=compute)
    return rank_metrics(q, g, ds)


def rank_metrics(q: np.ndarray, g: np.ndarray, ds: ReIDDataset) -> dict:
    """Rank-1/5/10, mAP and mINP (fractions) of query embeddings ``q`` against gallery ``g`` of ``ds``: the scalar
    part of ``metrics.rank_summary``, which the reports use whole."""
    summary = rank_summary(
        q,
        g,
        [s.pid for s in ds.query],
        [s.pid for s in ds.gallery],
        [s.camid for s in ds.query],
        [s.camid for s in ds.gallery],
    )
    return {key: summary[key] for key in ("rank1", "rank5", "rank10", "mAP", "mINP")}
