"""Test support: an OSNet-style ReID CNN written from the OSNet paper (Zhou et al., ICCV 2019): omni-scale residual
bottlenecks whose T = 4 streams stack 1..4 lite 3x3 layers (1x1 conv + depthwise 3x3, each with BN + ReLU), fused by
a unified aggregation gate (global pooling -> FC -> ReLU -> FC -> sigmoid, shared by all streams), then global
average pooling to the embedding. Tiny widths and one block per stage (OSNet has two) keep it at ~25 k parameters
and its graph small (with two blocks per stage, ExecuTorch's lowering passes alone took 84 s of the export test)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin, cout, k=1, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class LiteConv(nn.Sequential):
    def __init__(self, c):
        super().__init__(
            nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )


class AggregationGate(nn.Module):
    def __init__(self, c, reduction=4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c, c // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(c // reduction, c, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x)


class OSBlock(nn.Module):
    def __init__(self, cin, cout, streams=4):
        super().__init__()
        mid = cout // 4
        self.reduce = conv_bn(cin, mid)
        self.streams = nn.ModuleList(nn.Sequential(*[LiteConv(mid) for _ in range(t + 1)]) for t in range(streams))
        self.gate = AggregationGate(mid)
        self.expand = conv_bn(mid, cout, relu=False)
        self.skip = None if cin == cout else conv_bn(cin, cout, relu=False)
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.reduce(x)
        h = sum(self.gate(s(h)) for s in self.streams)
        return self.act(self.expand(h) + (x if self.skip is None else self.skip(x)))


class OSNetLike(nn.Module):
    def __init__(self, widths=(16, 32, 48, 64), dim=64):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        stages = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages += [OSBlock(cin, cout), conv_bn(cout, cout), nn.AvgPool2d(2, 2)]  # OSNet stacks two blocks
        self.stages = nn.Sequential(*stages[:-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1], dim))

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))))


def save_osnet_pt2(path, images: torch.Tensor, seed=0):
    """A randomly initialised OSNet-like model whose BN statistics come from `images` (N, 3, H, W), so that its
    embeddings tell those images apart, saved with torch.export.save."""
    torch.manual_seed(seed)
    model = OSNetLike()
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the passes
    with torch.no_grad():
        model(images)
    size = tuple(images.shape[2:])
    model.eval()
    ep = torch.export.export(model, (torch.randn(1, 3, *size),))
    torch.export.save(ep, str(path))
    return model
