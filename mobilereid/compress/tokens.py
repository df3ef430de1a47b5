"""AMG gradient-guided key/value token pruning (arXiv 2304.01452, REFERENCE.md section 2).

Score of key slot j in layer l (first-order Taylor estimate of the loss change when key j is removed):
    s_j = | sum_{b,h,i} A[b,h,i,j] * dL/dA[b,h,i,j] | / (B * H * Nq), summed over batches; CLS excluded.
Each layer's scores are normalised to unit L2 norm and multiplied by (1 - 0.03 l); all (layer, slot) pairs are
ranked globally and the int(tokens * layers * rate) lowest are removed. One static index set per layer; the class
token (slot 0, also each window's class token) is always kept; every query is kept, so each layer still outputs N
tokens. Unlike the official code, which projects K and V for every token and indexes afterwards (saving almost
nothing), the layer input is gathered *before* the K/V projections (`Attention.kv_index`), so executed MACs fall.

The loss for the gradients is the ID cross-entropy through the BNNeck classifier (train-time head, eval-mode
BatchNorm so statistics do not drift during scoring), plus batch-hard triplet when there is no classifier.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..losses import batch_hard_triplet
from ..models.vit import ViTReID, attention_hooks


def scoring_loss(model: ViTReID, x: torch.Tensor, y: torch.Tensor, cam: list) -> torch.Tensor:
    """The loss whose gradients the Taylor scores use (K/V tokens here, MLP units in `mlp.py`): ID cross-entropy through
    the BNNeck classifier, batch-hard triplet on the features when the model has no classifier."""
    feat = model.forward_features(x, *cam)
    if model.classifier is not None:
        return F.cross_entropy(model.classifier(model.bottleneck(feat)), y)
    return batch_hard_triplet(feat, y)


def token_scores(model: ViTReID, batches) -> list[torch.Tensor]:
    """Per block: (Nk,) accumulated |A * dL/dA| scores (CLS slot set to +inf so it is never removed)."""
    blocks = model.all_blocks()
    captured: list[list[torch.Tensor]] = [[] for _ in blocks]
    scores: list[torch.Tensor | None] = [None] * len(blocks)

    def hook_for(i):
        def hook(module, attn):
            attn.retain_grad()
            captured[i].append(attn)  # a shared window block is called once per window

        return hook

    try:
        with attention_hooks(model, hook_for):
            for x, y, *cam in batches:  # (images, labels[, cameras for SIE models])
                model.zero_grad(set_to_none=True)
                for c in captured:
                    c.clear()
                scoring_loss(model, x, y, cam).backward()
                for i, a in ((i, a) for i, calls in enumerate(captured) for a in calls):
                    B, H, Nq, _ = a.shape
                    s = (a * a.grad).sum(dim=(0, 1, 2)).abs().detach() / (B * H * Nq)
                    if scores[i] is not None and scores[i].shape != s.shape:
                        raise ValueError(
                            "K/V token pruning needs every sequence through a block to have the same length "
                            "(windows of unequal size share blocks: use window_weights='separate')"
                        )
                    scores[i] = s if scores[i] is None else scores[i] + s
    finally:
        model.zero_grad(set_to_none=True)
    out = []
    for s in scores:
        s = s.clone()
        s[0] = float("inf")
        out.append(s)
    return out


def slots_to_keep(
    scores: list[torch.Tensor],
    depths: list[int],
    rate: float,
    depth_weight: float = 0.03,
    current: list[list[int] | None] | None = None,
) -> list[list[int]]:
    """Global ranking of L2-normalised, depth-weighted scores; returns the kept slot indices per block (sorted)."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"token pruning rate must be in (0, 1), got {rate}")
    weighted = []
    for s, l in zip(scores, depths):
        finite = s[1:]
        norm = finite.norm().clamp_min(1e-12)
        w = torch.cat([s[:1], finite / norm * (1.0 - depth_weight * l)])
        weighted.append(w)
    n_tokens = sum(len(w) - 1 for w in weighted)
    n_remove = int(n_tokens * rate)
    ranked = sorted(((float(w[j]), bi, j) for bi, w in enumerate(weighted) for j in range(1, len(w))))
    removed: dict[int, set[int]] = {}
    count = 0
    for _, bi, j in ranked:
        if count == n_remove:
            break
        if len(weighted[bi]) - 1 - len(removed.get(bi, ())) <= 1:
            continue  # keep at least one patch key besides CLS
        removed.setdefault(bi, set()).add(j)
        count += 1
    keep = []
    for bi, w in enumerate(weighted):
        local = [j for j in range(len(w)) if j not in removed.get(bi, set())]
        if current is not None and current[bi] is not None:
            local = [current[bi][j] for j in local]  # map back to the layer's token positions
        keep.append(local)
    return keep


def prune_kv_tokens(model: ViTReID, keep: list[list[int]]) -> ViTReID:
    """A new model whose attention layers project K/V only for the kept token slots (same weights)."""
    cfg = copy.deepcopy(model.cfg)
    cfg.kv_index = [list(map(int, k)) for k in keep]
    new = ViTReID(cfg)
    state = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    for b in model.all_blocks():
        a = b.attn
        if a.kv_index is None:  # split the fused qkv projection into q and kv (same numbers)
            prefix = names[id(a)] + "."
            inner = a.num_heads * a.head_dim
            w = state.pop(prefix + "qkv.weight")
            state[prefix + "q.weight"], state[prefix + "kv.weight"] = w[:inner], w[inner:]
            if prefix + "qkv.bias" in state:
                bias = state.pop(prefix + "qkv.bias")
                state[prefix + "q.bias"], state[prefix + "kv.bias"] = bias[:inner], bias[inner:]
    new.load_state_dict(state)
    new.preset = getattr(model, "preset", None)
    new.train(model.training)
    return new
