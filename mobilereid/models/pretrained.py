"""Import ViT weights from a local timm / DeiT / TransReID state-dict file (never from the network).

Handles: nesting under ``model`` / ``state_dict``; ``module.`` (DDP) and ``base.`` (TransReID) prefixes; timm's
ImageNet ``head.*`` (dropped: ReID has its own classifier); TransReID's ``bottleneck.*`` / ``classifier.*`` (kept
when shapes fit); and the position embedding, resized from the source grid (e.g. 14x14 at 224) to the ReID grid
(e.g. 16x8 at 256x128 stride 16, 21x10 at stride 12) with bilinear interpolation (align_corners=False), as
TransReID's `resize_pos_embed` does. The class-token position is kept as is. A DeiT distillation token is dropped
with its position row (TransReID's loader does the same). For exact imports of trained models use
`mobilereid.models.importers` (`mobilereid import`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .checkpoint import safe_torch_load
from .vit import ViTReID


def resize_pos_embed(
    pos: torch.Tensor, grid: tuple[int, int], src_grid: tuple[int, int] | None = None, mode: str = "bilinear"
) -> torch.Tensor:
    """(1, 1+N_src, C) -> (1, 1+gh*gw, C); the source grid is square unless given."""
    cls, patches = pos[:, :1], pos[:, 1:]
    n_src = patches.shape[1]
    if src_grid is None and n_src == grid[0] * grid[1]:
        return pos  # already on the ReID grid (TransReID checkpoints)
    if src_grid is None:
        side = int(math.isqrt(n_src))
        if side * side != n_src:
            raise ValueError(f"cannot infer the source grid of a position embedding with {n_src} patches")
        src_grid = (side, side)
    if tuple(src_grid) == tuple(grid):
        return pos
    C = patches.shape[-1]
    img = patches.reshape(1, src_grid[0], src_grid[1], C).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode=mode, align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], C)], dim=1)


def load_pretrained_vit(model: ViTReID, path: str | Path, src_grid: tuple[int, int] | None = None) -> dict:
    """Load a foreign state dict into `model`; returns {'loaded': n, 'skipped': [...], 'missing': [...]}."""
    path = Path(path)
    sd = safe_torch_load(path, "pretrained weights")
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (timm/DeiT/TransReID state dict)")
    own = model.state_dict()
    clean = {}
    for k, v in sd.items():
        for prefix in ("module.", "base."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.startswith("head.") or k.startswith("fc.") or k.startswith("head_dist.") or k == "dist_token":
            continue
        clean[k] = v
    if "dist_token" in sd and "pos_embed" in clean:
        clean["pos_embed"] = torch.cat([clean["pos_embed"][:, :1], clean["pos_embed"][:, 2:]], dim=1)
    for core in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if core not in clean or tuple(clean[core].shape) != tuple(own[core].shape):
            raise CheckpointError(
                f"{path}: core ViT weights do not fit the model ({core} missing or of another shape: "
                "wrong width, patch size or not a ViT state dict)"
            )
    if "pos_embed" in clean:
        try:
            clean["pos_embed"] = resize_pos_embed(clean["pos_embed"], model.cfg.grid, src_grid)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    skipped = [k for k, v in clean.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    loadable = {k: v for k, v in clean.items() if k not in skipped}
    missing = [k for k in own if k not in loadable]
    model.load_state_dict(loadable, strict=False)
    return {"loaded": len(loadable), "skipped": skipped, "missing": missing}
