"""ReID losses: label-smoothed cross-entropy (eps=0.1) and batch-hard triplet loss (Hermans et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(feat: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """For each anchor: hardest positive (farthest same id) vs hardest negative (closest other id), Euclidean."""
    dist = torch.cdist(feat, feat).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def reid_loss(
    logits: list[torch.Tensor],
    feats: list[torch.Tensor],
    labels: torch.Tensor,
    smoothing: float = 0.1,
    margin: float = 0.3,
) -> tuple[torch.Tensor, dict]:
    ce = sum(F.cross_entropy(lg, labels, label_smoothing=smoothing) for lg in logits) if logits else torch.zeros(())
    tri = sum(batch_hard_triplet(f, labels, margin) for f in feats)
    acc = (logits[0].argmax(1) == labels).float().mean() if logits else torch.zeros((), device=labels.device)
    # detached device tensors, not Python floats: reading them would wait for the GPU on every step
    return ce + tri, {"ce": ce.detach(), "triplet": tri.detach(), "acc": acc.detach()}
