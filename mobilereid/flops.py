"""Executed multiply-accumulates (MACs) and parameters, counted on the real forward graph.

1 MAC = 1 FLOP, as fvcore and torchreid count (REFERENCE.md section 5). The count runs the model once under
`torch.utils.flop_counter.FlopCounterMode`, which sees every matmul, linear and convolution that actually executes
(including the two attention matrix products q@k^T and attn@v that thop and ptflops miss, and only the K/V tokens
that survive pruning), and divides its FLOPs (2 per multiply-add) by two. LayerNorm, softmax, GELU and additions
are not counted, as in the published numbers.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, exclude_classifier: bool = True) -> int:
    n = 0
    for name, p in model.named_parameters():
        if exclude_classifier and "classifier" in name:
            continue
        n += p.numel()
    return n


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int] | None = None, per_module: bool = False):
    """Executed MACs of one image through `model` in eval mode; with per_module, also {module name: MACs}."""
    if input_size is None:
        input_size = tuple(model.cfg.img_size)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *input_size)
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        if getattr(model, "uses_camera", False):  # SIE models: any camera, the MACs do not depend on it
            model(x, torch.zeros(1, dtype=torch.long))
        else:
            model(x)
    model.train(was_training)
    total = counter.get_total_flops() // 2
    if not per_module:
        return total
    table = defaultdict(int)
    for name, ops in counter.get_flop_counts().items():
        table[name] += sum(ops.values()) // 2
    return total, dict(table)
