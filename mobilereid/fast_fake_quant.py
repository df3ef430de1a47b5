"""Per-tensor activation fake quantization for quantization-aware fine-tuning, vectorised.

Why: in a profile of quant-finetune most of the fake-quantized forward pass was
``aten::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams``, the kernel behind torchao's
``FusedMovingAvgObsFakeQuantize``: on this torch build (2.13 CPU) it runs one scalar loop per element, where a chain
of vectorised element-wise ops does the same arithmetic several times faster (measured side by side:
docs/results/2026-12-01-fast-fake-quant.md).

What: the same moving-average observer the fused module carries (``MovingAverageMinMaxObserver``: running min/max
with averaging constant 0.01, then affine int8 scale and zero point), and the same forward numbers,
``(clamp(round(x * (1 / scale)) + zero_point, qmin, qmax) - zero_point) * scale`` (Jacob et al. 2018, Eq. 1 and 7), with
the straight-through estimator of the fused kernel's backward: the gradient passes where ``x`` lies inside the
quantization range and is zero where it was clipped (Bengio et al. 2013; the ``cachemask`` of PyTorch's kernel).
Weights keep torchao's per-channel fake quantization (0.5 % of the forward time in that profile).

Only the fine-tuning graph uses this (imported lazily there, like torchao); exports calibrate and quantize with their
own toolchains.
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize


class _RoundClampSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.round(x * scale.reciprocal()).add_(zero_point)  # x * (1 / scale) as PyTorch's kernel: same roundings
        inside = (q >= qmin).logical_and_(q <= qmax)
        ctx.save_for_backward(inside)
        return q.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize_per_tensor(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Affine per-tensor fake quantization with the straight-through estimator (gradient 0 where clipped)."""
    return _RoundClampSTE.apply(x, scale.to(x.dtype), zero_point.to(x.dtype), qmin, qmax)


def vectorise_activation_fake_quant(graph: torch.nn.Module) -> int:
    """Switch every per-tensor ``FusedMovingAvgObsFakeQuantize`` of a PT2E QAT graph to the vectorised forward, in
    place (buffers, observer state and the enable/disable switches are kept). Returns how many were switched."""
    switched = 0
    for module in graph.modules():
        if type(module) is FusedMovingAvgObsFakeQuantize and not module.is_per_channel:
            module.__class__ = VectorisedActivationFakeQuantize
            switched += 1
    return switched


class VectorisedActivationFakeQuantize(FusedMovingAvgObsFakeQuantize):
    """``FusedMovingAvgObsFakeQuantize`` (per-tensor) with the observer and fake quantization run as vectorised ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observer = self.activation_post_process
        if self.observer_enabled[0] == 1:
            observer(x.detach())
            scale, zero_point = observer.calculate_qparams()
            self.scale.copy_(scale)
            self.zero_point.copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:
            return fake_quantize_per_tensor(x, self.scale, self.zero_point, observer.quant_min, observer.quant_max)
        return x
