"""Function-preserving rewrites of a ViT for full-integer LiteRT models (issue 15): the same embeddings in float
(max abs difference ~5e-5 on the trained vit_tiny), a graph whose integer version keeps them.

Found per tensor on the trained LayerNorm vit_tiny of ``make run`` (litert-torch + ai-edge-quantizer, int16
activations and int8 weights, 32 held-out images, mean cosine to the float model), together with the calibration
rule (``litert_torch_route.calibrate``: the extremes over all images instead of ai-edge-quantizer's moving average,
which clips every image that runs beyond the average, 0.516 → 0.962):

1. **LayerNorm's square as a MUL.** LiteRT's converter decomposes LayerNorm into MEAN, SQUARED_DIFFERENCE, RSQRT,
   MUL and ADD; ai-edge-quantizer has no int16 configuration for SQUARED_DIFFERENCE and silently leaves it in float
   (one float op per LayerNorm: the int16x8 model was not full integer). ``DecomposedLayerNorm`` computes
   ``xc = x - mean(x)``, ``var = mean(xc * xc)``, ``xc * rsqrt(var + eps) * weight + bias``: the same arithmetic
   with ops that all have int16 kernels. Now full integer at the same cosine (0.962).
2. **Block 0's class-token LayerNorm as a constant.** The class token entering the first block is the same for every
   image (class token + its position embedding, + a baked-in camera embedding); its variance over the channels is
   tiny (0.001 against ~1 for patch tokens), so with one quantization scale per tensor the first LayerNorm's
   variance and reciprocal square root cannot resolve it, and the error is a bias every image carries through the
   network. ``ConstantFirstTokenNorm`` puts the float result for that row in the graph and normalises only the
   patch tokens: 0.962 → 0.981 on vit_tiny; on the compressed vit_tiny of ``make run`` (the pipeline's ViT) int16x8
   reaches 0.993. It is applied only when that row is checked to be the same for two different calibration images.

3. **For int16 graphs, the reciprocal square root as SQRT + DIV.** What was left was RSQRT: LiteRT's int16 RSQRT
   kernel errs by 17-37 % on inputs in the lowest 0.3 % of its range (measured on a lone ADD + RSQRT graph, inputs
   spread over 3.5 decades), while input quantization alone accounts for 0.3 %, and the variances of one LayerNorm
   span that much across tokens. ``1 / sqrt(var)`` as int16 SQRT and DIV stays at the input-quantization floor
   (0.29 % at the low end). A standard deviation below half a quantization step of its tensor would round to zero
   and stop LiteRT's DIV ("data[i] != zero_point", seen on one evaluation image of the compressed vit_tiny), so the
   square root is clamped at two int16 steps of the largest value seen on the calibration images (a MAXIMUM with a
   constant; the step follows the int16 headroom, see `litert_torch_route`). On the trained and the compressed
   vit_tiny, with the ViT recipe's headroom of 2, the floors are 1.4e-4 to 8.9e-4 (largest standard deviation 7.3),
   below sqrt(eps) = 1e-3, the smallest value the square root takes in float: the float function is unchanged (a
   model with standard deviations above 8 would get floors above it, changing only tokens whose channels are all but
   equal).
   Not for int8 graphs: 255 steps leave most small values at the zero point, so the int8 graph keeps RSQRT.

Models without LayerNorm (``norm = "batch"``) pass unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class DecomposedLayerNorm(nn.Module):
    """LayerNorm over the last dimension, written with ops that have int16 kernels in LiteRT (module docstring, 1);
    ``divide``: the reciprocal square root as SQRT + DIV (3)."""

    def __init__(self, norm: nn.LayerNorm, divide: bool = False, std_floor: float = 0.0):
        super().__init__()
        self.weight, self.bias, self.eps, self.divide, self.std_floor = (
            norm.weight,
            norm.bias,
            norm.eps,
            divide,
            std_floor,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True)
        var = (xc * xc).mean(-1, keepdim=True) + self.eps
        y = xc * (1.0 / torch.sqrt(var).clamp_min(self.std_floor) if self.divide else torch.rsqrt(var))
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class ConstantFirstTokenNorm(nn.Module):
    """A norm whose input row 0 is the same for every image: that row's output is stored, the rest normalised
    (module docstring, 2)."""

    def __init__(self, norm: nn.Module, first_row: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("first_row", first_row.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first_row.expand(x.shape[0], -1, -1), self.norm(x[:, 1:])], dim=1)


def integer_friendly(
    model: nn.Module, images: torch.Tensor, divide: bool = False, headroom: float = 1.0
) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with the rewrites that apply to it, and their names (empty: the model itself). ``images``:
    preprocessed images (at least two: block 0's first row must be the same for two of them; the calibration
    images for ``divide``: reciprocal square roots as SQRT + DIV, for int16 graphs, module docstring 3)."""
    rewrites = []
    model = copy.deepcopy(model).eval()
    first = _constant_first_row(model, images)
    if first is not None:
        block = model.blocks[0]
        block.norm1 = ConstantFirstTokenNorm(block.norm1, block.norm1(first))
        rewrites.append("block 0 class-token LayerNorm as a constant")
    floors = _std_floors(model, images, headroom) if divide else {}
    swapped = _decompose_layer_norms(model, divide, floors)
    if swapped:
        rewrites.append(
            f"{swapped} LayerNorm squares as MUL" + (", reciprocal square roots as SQRT + DIV" if divide else "")
        )
    return model, rewrites


def _decompose_layer_norms(module: nn.Module, divide: bool, floors: dict) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
            setattr(module, name, DecomposedLayerNorm(child, divide, floors.get(id(child), 0.0)))
            count += 1
        else:
            count += _decompose_layer_norms(child, divide, floors)
    return count


INT16_STEPS = 32767


def _std_floors(model: nn.Module, images: torch.Tensor, headroom: float = 1.0) -> dict:
    """id(LayerNorm) -> two int16 steps of the largest standard deviation it sees over ``images``, that range widened
    by ``headroom`` (docstring, 3)."""
    largest: dict[int, float] = {}

    def record(norm, args):
        x = args[0].detach()
        std = torch.sqrt(x.var(-1, unbiased=False) + norm.eps).max().item()
        largest[id(norm)] = max(largest.get(id(norm), 0.0), std)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with torch.no_grad():
            for start in range(0, len(images), 16):
                model(images[start : start + 16])
    finally:
        for h in hooks:
            h.remove()
    return {k: 2.0 * headroom * v / INT16_STEPS for k, v in largest.items()}


def _constant_first_row(model: nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Block 0's norm1 input row 0 if it is a LayerNorm fed the same row by two different images, else None."""
    blocks = getattr(model, "blocks", None)
    if not blocks or not isinstance(getattr(blocks[0], "norm1", None), nn.LayerNorm) or len(images) < 2:
        return None
    seen = []
    hook = blocks[0].norm1.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, :1].detach()))
    try:
        with torch.no_grad():
            model(images[:2])
    finally:
        hook.remove()
    if len(seen) != 1 or seen[0].dim() != 3 or seen[0].shape[0] != 2:
        return None  # block 0 ran more than once (windows) or not on token sequences
    rows = seen[0]
    return rows[:1] if torch.equal(rows[0], rows[1]) else None
