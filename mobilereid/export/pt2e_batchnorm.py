"""Standalone BatchNorms of a calibrated PT2E graph written as their affine form, before `convert_pt2e`.

Why: `prepare_pt2e` folds every conv -> BatchNorm pair into the conv; the BatchNorms left are standalone (SCL-net's
BN after the sum of its fuse convs, the BN-neck of every ReID head). `convert_pt2e` still searches any graph with a
BatchNorm node for the QAT conv-bn patterns, and building those patterns traces ~20 small graphs through
`torch.export`: measured 14-29 s per INT8 lowering on this host, for a search that cannot match after post-training
calibration (the patterns need fake-quant conv weights). An inference BatchNorm is ``x * scale + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale`` per channel; written that way
the graph has no BatchNorm node and `convert_pt2e` skips the search. The observers around the node stay where they
were, and ExecuTorch's XNNPACK lowering decomposes a standalone BatchNorm into the same multiply and add: the lowered
program's outputs were measured identical (max abs difference 0.0 on sclnet_test) with the same delegation.
Used for post-training quantization only (a QAT graph needs its BatchNorms for the pattern fold).
"""

from __future__ import annotations

import torch


def _tensor(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    if node is None:
        return None
    owner, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def batchnorms_as_affine(gm: torch.fx.GraphModule) -> int:
    """Rewrite every inference ``aten.batch_norm`` node of ``gm`` in place as a multiply and an add by per-channel
    constants (registered as buffers of ``gm``); returns how many were rewritten."""
    graph, count = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.batch_norm.default:
            continue
        x, weight, bias, mean, var, training = node.args[:6]
        if training:
            continue
        eps = node.args[7] if len(node.args) > 7 else node.kwargs.get("eps", 1e-5)
        with torch.no_grad():
            var_t, mean_t = _tensor(gm, var), _tensor(gm, mean)
            gamma, beta = _tensor(gm, weight), _tensor(gm, bias)
            scale = torch.rsqrt(var_t + eps) * (gamma if gamma is not None else 1.0)
            shift = (beta if beta is not None else 0.0) - mean_t * scale
        shape = (-1,) + (1,) * (node.meta["val"].dim() - 2)  # channels on dim 1, broadcast over the rest
        names = []
        for kind, value in (("scale", scale), ("shift", shift)):
            names.append(f"_bn_affine_{kind}_{count}")
            gm.register_buffer(names[-1], value.detach().reshape(shape).contiguous())
        with graph.inserting_before(node):
            mul = graph.call_function(torch.ops.aten.mul.Tensor, (x, graph.get_attr(names[0])))
            add = graph.call_function(torch.ops.aten.add.Tensor, (mul, graph.get_attr(names[1])))
        mul.meta, add.meta = dict(node.meta), dict(node.meta)
        node.replace_all_uses_with(add)
        graph.erase_node(node)
        count += 1
    if count:
        graph.eliminate_dead_code()
        gm.recompile()
    return count
