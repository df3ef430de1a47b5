"""AMG attention-entropy head pruning (arXiv 2304.01452, REFERENCE.md section 2), with physical removal.

* Statistics: one pass over data; every layer's softmax attention is averaged over images (and batch):
  A_h (Nq x Nk) per head.
* Entropy of the averaged map along keys: E_h = (1/Nq) sum_i sum_j -A_h[i,j] log2 A_h[i,j]. A head with high
  entropy attends uniformly (carries little specific information) and is removed first.
* Depth weighting: layer l's entropies are multiplied by (1 + 0.02 l); all heads are ranked globally and the
  highest removed; a layer's last head is never removed.
* Surgery: the qkv weight viewed as (3, H, d, C) keeps the surviving heads in q, k and v (and the bias); the
  output projection keeps the matching d-column blocks of its input. `heads_per_layer` becomes per layer, and the
  result is an ordinary smaller model (no masks).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..models.vit import ViTReID, attention_hooks


@torch.no_grad()
def mean_attention_maps(model: ViTReID, batches) -> list[torch.Tensor]:
    """Per block (all_blocks order): the data-mean softmax attention, shape (H, Nq, Nk)."""
    blocks = model.all_blocks()
    sums: list[torch.Tensor | None] = [None] * len(blocks)
    counts = [0] * len(blocks)

    def hook_for(i):
        def hook(module, attn):
            s = attn.detach().sum(0)
            if sums[i] is not None and sums[i].shape != s.shape:
                raise ValueError(
                    "head statistics need every sequence through a block to have the same length "
                    "(windows of unequal size share blocks: use window_weights='separate')"
                )
            sums[i] = s if sums[i] is None else sums[i] + s
            counts[i] += attn.shape[0]

        return hook

    with attention_hooks(model, hook_for):
        for x in batches:
            model(*x) if isinstance(x, tuple) else model(x)  # (images, cameras) for SIE models
    if counts[0] == 0:
        raise ValueError("no data for the attention statistics pass")
    return [s / c for s, c in zip(sums, counts)]


def head_entropy(mean_attn: torch.Tensor) -> torch.Tensor:
    """(H, Nq, Nk) averaged attention -> (H,) entropy in bits, averaged over queries."""
    p = mean_attn.clamp_min(1e-12)
    return -(mean_attn * torch.log2(p)).sum(-1).mean(-1)


def heads_to_remove(
    entropies: list[torch.Tensor], depths: list[int], n_remove: int, depth_weight: float = 0.02
) -> dict[int, list[int]]:
    """Global ranking of depth-weighted entropies; returns {block index: [head indices to remove]}."""
    alive = [len(e) for e in entropies]
    removable = sum(a - 1 for a in alive)
    if n_remove > removable:
        raise ValueError(f"cannot remove {n_remove} heads: only {removable} can go (each layer keeps at least one)")
    scored = []
    for bi, (e, l) in enumerate(zip(entropies, depths)):
        for h, v in enumerate(e.tolist()):
            scored.append((v * (1.0 + depth_weight * l), bi, h))
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    out: dict[int, list[int]] = {}
    for _, bi, h in scored:
        if n_remove == 0:
            break
        if alive[bi] <= 1:
            continue  # never remove a layer's last head
        out.setdefault(bi, []).append(h)
        alive[bi] -= 1
        n_remove -= 1
    return {k: sorted(v) for k, v in out.items()}


def prune_heads(model: ViTReID, remove: dict[int, list[int]]) -> ViTReID:
    """A new, smaller model with the given heads physically removed."""
    cfg = copy.deepcopy(model.cfg)
    blocks = model.all_blocks()
    d = cfg.head_dim
    keep_per_block = []
    for bi, b in enumerate(blocks):
        H = b.attn.num_heads
        gone = set(remove.get(bi, []))
        if len(gone) >= H:
            raise ValueError(f"block {bi}: cannot remove all {H} heads")
        keep_per_block.append([h for h in range(H) if h not in gone])
    cfg.heads_per_layer = [len(k) for k in keep_per_block]
    new = ViTReID(cfg)
    state = model.state_dict()
    new_names = {id(b): n for n, b in new.named_modules()}
    old_names = {id(b): n for n, b in model.named_modules()}
    for b_old, b_new, keep in zip(blocks, new.all_blocks(), keep_per_block):
        prefix = old_names[id(b_old)] + ".attn."
        assert new_names[id(b_new)] + ".attn." == prefix
        H = b_old.attn.num_heads
        C = cfg.embed_dim
        k = torch.tensor(keep)
        # fused (3, H, d, C) qkv, or q (1, H, d, C) and kv (2, H, d, C) after K/V token pruning
        for name, parts in (("qkv", 3), ("q", 1), ("kv", 2)):
            if prefix + f"{name}.weight" not in state:
                continue
            w = state[prefix + f"{name}.weight"].reshape(parts, H, d, C)[:, k]
            state[prefix + f"{name}.weight"] = w.reshape(parts * len(keep) * d, C)
            if prefix + f"{name}.bias" in state:
                state[prefix + f"{name}.bias"] = state[prefix + f"{name}.bias"].reshape(parts, H, d)[:, k].reshape(-1)
        pw = state[prefix + "proj.weight"].reshape(C, H, d)[:, k].reshape(C, len(keep) * d)
        state[prefix + "proj.weight"] = pw
    new.load_state_dict(state)
    new.preset = getattr(model, "preset", None)
    new.train(model.training)
    return new


def total_heads(model: ViTReID) -> int:
    return sum(b.attn.num_heads for b in model.all_blocks())


def choose_heads(model: ViTReID, batches, n_remove: int) -> dict:
    """The statistics pass and the choice (no surgery): {"removed": {block: [heads]}, "entropy": per block}."""
    ent = [head_entropy(m) for m in mean_attention_maps(model, batches)]
    return {"removed": heads_to_remove(ent, model.block_depths(), n_remove), "entropy": [e.tolist() for e in ent]}


def prune_heads_once(model: ViTReID, batches, n_remove: int) -> tuple[ViTReID, dict]:
    info = choose_heads(model, batches, n_remove)
    return prune_heads(model, info["removed"]), info


def schedule(total: int, rounds: int) -> list[int]:
    """Split `total` removals into `rounds` near-equal steps (AMG: 1/rounds of the target per round)."""
    base = np.full(rounds, total // rounds)
    base[: total % rounds] += 1
    return [int(v) for v in base]
