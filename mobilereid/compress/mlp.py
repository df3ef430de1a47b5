"""MLP hidden-unit pruning with first-order Taylor importance, with physical removal (a step of `compress`).

Why: at ``vit_tiny``'s width the MLP (C -> 4C -> C) is two thirds of a block's linear MACs, and neither AMG step
touches it (heads and K/V tokens are attention). Each hidden unit of a block's MLP is a GELU output ``a_j`` that
reaches the residual stream only through column j of ``fc2``; removing it removes row j of ``fc1`` and column j of
``fc2``, so both linears shrink and the model stays an ordinary one (no masks).

Importance (Molchanov et al. 2019, "Importance estimation for neural network pruning", the gate formulation): a
virtual gate ``m_j = 1`` multiplies the unit's activation; the first-order estimate of the loss change when the gate
closes is ``dL/dm_j = sum over tokens of a_j * dL/da_j``, and the unit's importance is that derivative squared,
summed over the statistics batches. The loss is the one the K/V token scores use (`tokens.py`): ID cross-entropy
through the BNNeck classifier, batch-hard triplet without a classifier.

Which units go: the same fraction in every layer (``rate``), each layer dropping its lowest-importance units.
Choice and why: Taylor scores of different layers are not on one scale (the residual stream and the gradients
grow with depth), and a global ranking would need a normalisation that is itself a tuning knob; a uniform rate
also keeps every block's shape alike. Kept units keep their order. Shared window blocks are scored over every
window that passes through them.
"""

from __future__ import annotations

import copy

import torch

from ..models.vit import ViTReID
from .tokens import scoring_loss


def mlp_unit_scores(model: ViTReID, batches) -> list[torch.Tensor]:
    """Per block (all_blocks order): (hidden,) accumulated (sum_tokens a * dL/da)^2 per batch."""
    blocks = model.all_blocks()
    captured: list[list[torch.Tensor]] = [[] for _ in blocks]
    scores: list[torch.Tensor | None] = [None] * len(blocks)

    def hook_for(i):
        def hook(_module, _inputs, out):
            out.retain_grad()
            captured[i].append(out)

        return hook

    was_training = model.training
    model.eval()  # eval-mode BatchNorm: scoring does not move the neck's statistics
    handles = [b.mlp.act.register_forward_hook(hook_for(i)) for i, b in enumerate(blocks)]
    try:
        for x, y, *cam in batches:  # (images, labels[, cameras for SIE models])
            model.zero_grad(set_to_none=True)
            for c in captured:
                c.clear()
            scoring_loss(model, x, y, cam).backward()
            for i, calls in enumerate(captured):
                gate = sum((a * a.grad).sum(dim=(0, 1)) for a in calls)  # dL/dm_j for this batch
                s = gate.detach() ** 2
                scores[i] = s if scores[i] is None else scores[i] + s
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if scores[0] is None:
        raise ValueError("no data for the MLP statistics pass")
    return scores


def units_to_keep(scores: list[torch.Tensor], rate: float) -> list[list[int]]:
    """Per block: the indices of the units kept (the highest scores, in their original order), the same fraction
    ``rate`` removed in every block (each block keeps at least one unit)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"MLP rate must be in [0, 1), got {rate}")
    keep = []
    for s in scores:
        n = max(1, int(round(len(s) * (1.0 - rate))))
        keep.append(sorted(torch.argsort(s, descending=True, stable=True)[:n].tolist()))
    return keep


@torch.no_grad()
def prune_mlp_units(model: ViTReID, keep: list[list[int]]) -> ViTReID:
    """A new model whose block b keeps only MLP units ``keep[b]`` (fc1 rows and bias, fc2 columns)."""
    cfg = copy.deepcopy(model.cfg)
    blocks = model.all_blocks()
    if len(keep) != len(blocks):
        raise ValueError(f"need one kept-unit list per block ({len(blocks)}), got {len(keep)}")
    cfg.mlp_hidden_per_layer = [len(k) for k in keep]
    new = ViTReID(cfg)
    state = model.state_dict()
    names = {id(b): n for n, b in model.named_modules()}
    for block, units in zip(blocks, keep):
        prefix = names[id(block)] + ".mlp."
        idx = torch.tensor(units, dtype=torch.long)
        state[prefix + "fc1.weight"] = state[prefix + "fc1.weight"].index_select(0, idx)
        state[prefix + "fc1.bias"] = state[prefix + "fc1.bias"].index_select(0, idx)
        state[prefix + "fc2.weight"] = state[prefix + "fc2.weight"].index_select(1, idx)
    new.load_state_dict(state)
    new.preset = getattr(model, "preset", None)
    new.train(model.training)
    return new
