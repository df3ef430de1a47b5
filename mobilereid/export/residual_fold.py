"""Fold OSNet's two 1x1 convolutions that feed a block's residual add into one, for microcontrollers.

In an OSNet block whose input and output widths differ, ``conv3`` (1x1 conv + BN on the gated stream sum) and the
``downsample`` projection (1x1 conv + BN on the block input) are added and passed through a ReLU. Both are linear
in their inputs, so ``conv3(x2) + downsample(x) == W3' x2 + Wd' x + b == [W3' | Wd'] concat(x2, x) + b`` with each
BN folded into its convolution (``W' = W * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var +
eps)``): one 1x1 convolution over the concatenated inputs, with the ReLU fused. Exact in real arithmetic (float
rounding only). Why: in TFLite Micro the unfolded block holds three full-width tensors at once (the two branch
outputs and their sum), the arena's peak for ``osnet_x0_25`` at 256x128; the folded block holds the concatenated
inputs (a quarter of the width plus the block's input width) and one output. In int8 the concatenation shares one
scale between its two inputs (TFLite's int8 CONCATENATION keeps input and output scales equal), so the export
verifies the folded model like any other. Blocks with InstanceNorm (IBN / AIN variants) are left as they are: IN
is not linear in the batch statistics sense BN folding relies on.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = bn.bias - bn.running_mean * scale + (conv.bias * scale if conv.bias is not None else 0)
    return weight, bias


class FoldedProjectionBlock(nn.Module):
    """An OSNet block whose conv3 and downsample run as one convolution over ``concat(x2, x)`` (ReLU fused)."""

    def __init__(self, block):
        super().__init__()
        self.conv1, self.gate, self._streams = block.conv1, block.gate, nn.ModuleList(block.streams())
        w3, b3 = _folded(block.conv3.conv, block.conv3.bn)
        wd, bd = _folded(block.downsample.conv, block.downsample.bn)
        self.fused = nn.Conv2d(w3.shape[1] + wd.shape[1], w3.shape[0], 1, bias=True)
        with torch.no_grad():
            self.fused.weight.copy_(torch.cat([w3, wd], dim=1))
            self.fused.bias.copy_(b3 + bd)

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = sum(self.gate(stream(x1)) for stream in self._streams)
        return F.relu(self.fused(torch.cat([x2, x], dim=1)))


def foldable(block) -> bool:
    return (
        block.downsample is not None
        and block.IN is None
        and block.conv3.bn is not None
        and block.downsample.bn is not None
    )


def fold_residual_projections(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every foldable OSNet block folded; returns it and how many were."""
    from ..models.osnet import OSBlock

    model = copy.deepcopy(model).eval()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OSBlock) and foldable(child):
                setattr(parent, name, FoldedProjectionBlock(child))
                count += 1
    return model, count
