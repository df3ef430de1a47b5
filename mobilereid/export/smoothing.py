"""Scale migration from LayerNorm outputs into the next linear layer (SmoothQuant), before static INT8.

Why: a static INT8 linear quantizes its input with one scale per tensor. A ViT's LayerNorm outputs have a few
channels with much larger magnitudes than the rest (the inter-channel variation FQ-ViT, Lin et al. 2022, describes for
LayerNorm inputs), so one scale wastes most of the int8 grid on them. SmoothQuant (Xiao et al. 2023, "SmoothQuant:
accurate and efficient post-training quantization for large language models", Eq. 4) moves that variation into the
weights, which are quantized per output channel anyway: with ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``,
``X' = X / s`` and ``W'_:,j = W_:,j * s_j``, so ``X' W'^T == X W^T`` exactly in real arithmetic. Where ``X`` is a
LayerNorm output the division folds into the LayerNorm's own affine parameters (gamma / s, beta / s), so the
smoothed model has the same graph and the same float outputs (up to float rounding); only the quantizer sees
flatter activations. The paper's default ``alpha = 0.5`` is ours; the maxima come from the calibration images.

Pairs smoothed: ``norm1`` -> the attention's input projections (``qkv``, or ``q`` and ``kv`` of a K/V-pruned layer,
which share the same input) and ``norm2`` -> ``mlp.fc1``, in every block (windows and the JPM block included).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..errors import ExportError


def _consumers(block) -> list[tuple[torch.nn.LayerNorm, list[torch.nn.Linear]]]:
    attn = block.attn
    first = [attn.qkv] if attn.kv_index is None else [attn.q, attn.kv]
    return [(block.norm1, first), (block.norm2, [block.mlp.fc1])]


def _blocks(model) -> list:
    blocks = list(model.all_blocks())
    if getattr(model, "jpm_block", None) is not None:
        blocks.append(model.jpm_block)
    return blocks


def smooth_layernorm_outputs(model: torch.nn.Module, images: np.ndarray, alpha: float = 0.5) -> torch.nn.Module:
    """A copy of the ViT ``model`` with each LayerNorm -> linear pair smoothed (see the module docstring); ``images``
    are preprocessed calibration images (N, 3, H, W)."""
    if not hasattr(model, "all_blocks"):
        raise ExportError("int8.smooth_alpha applies to ViT models only (LayerNorm -> linear pairs)")
    if not 0.0 < alpha <= 1.0:
        raise ExportError(f"int8.smooth_alpha must be in (0, 1], got {alpha!r}")
    model = copy.deepcopy(model).eval()
    pairs = [pair for block in _blocks(model) for pair in _consumers(block)]
    maxima: dict[int, torch.Tensor] = {}

    def hook_for(i):
        def hook(_module, _inputs, out):
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0)
            maxima[i] = m if i not in maxima else torch.maximum(maxima[i], m)

        return hook

    handles = [norm.register_forward_hook(hook_for(i)) for i, (norm, _) in enumerate(pairs)]
    try:
        with torch.no_grad():
            for start in range(0, len(images), 16):
                model(torch.from_numpy(np.ascontiguousarray(images[start : start + 16])))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for i, (norm, linears) in enumerate(pairs):
            if i not in maxima:  # a block the forward pass does not run (e.g. a training-only branch)
                continue
            w_max = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
            s = (maxima[i].clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            norm.weight.div_(s)
            norm.bias.div_(s)
            for lin in linears:
                lin.weight.mul_(s)
    return model
