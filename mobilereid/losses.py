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


def deployed_embedding(neck, feat: torch.Tensor) -> torch.Tensor:
    """The embedding a deployed model outputs, as a function of a training pass's pre-neck features: the BN-neck
    with its running statistics (eval mode, what export traces), or the features themselves when the model exports
    them before the neck (``neck=None``). ``neck``: a BatchNorm1d, or anything with its running_mean, running_var,
    weight, bias and eps (a QAT graph's tensors). Differentiable in ``feat`` and in the neck's affine weights."""
    if neck is None:
        return feat
    return F.batch_norm(feat, neck.running_mean, neck.running_var, neck.weight, neck.bias, False, 0.0, neck.eps)


def compatibility_loss(student: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos(student, reference)`` per image: feature distillation towards the embeddings of the model the
    user deployed first, so that a gallery it enrolled still matches (backward-compatible training in the sense of
    Shen et al. 2020, "Towards backward-compatible representation learning", here with the cosine the matcher uses
    instead of their influence loss through the old classifier)."""
    return (1 - F.cosine_similarity(student.float(), reference.float(), dim=1)).mean()
