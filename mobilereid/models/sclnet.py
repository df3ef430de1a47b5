"""SCL-net: a ~2.3M-parameter ReID CNN built from symmetrical combination units (Cai & Tang, AIPMV 2023).

Only the abstract exists (REFERENCE.md section 3): "SC-units build feature maps of richer channels by reusing
feature maps from different convolution layers; all base modules redesigned; shallow and deep features trained
jointly". This is our reading, documented so it can be argued with:

**SC-unit** (in -> out channels, mid = out / 4):

* a 1x1 conv reduces the input to ``mid`` channels (x0);
* chain A: T=3 successive light convs (1x1 pointwise, then depthwise 3x3, BN, ReLU, as OSNet's Lite 3x3), each
  feeding the next: a1, a2, a3 have receptive fields 3, 5, 7;
* chain B, the symmetric counterpart: the same, with dilated (d=2) depthwise 3x3: b1, b2, b3 see 5, 9, 13;
* symmetric combination: s_t = a_t + b_(T+1-t), i.e. the shallowest map of one chain is paired with the deepest of
  the other, so every channel group mixes a small and a large receptive field (maps from *different* layers
  reused instead of computing new ones);
* concat(s_1, s_2, s_3) (3 x mid channels, "richer channels") -> 1x1 conv fuse -> BN, plus a residual
  (the fuse conv is stored as one 1x1 conv per part and summed: identical maths, export-friendly)
  (identity, or 1x1 projection when channels change), ReLU.

**Redesigned base modules** for export: the stem is a stride-2 3x3 conv followed by a stride-2 3x3 conv instead of
a 7x7 conv + padded max-pool (padded MaxPool is what makes OSNet's INT8 TFLite collapse, REFERENCE.md section 7);
transitions are 1x1 conv + 2x2 average pooling (no padding, expressed as a fixed depthwise conv so XNNPACK's int8
path takes it: `AvgPool2x2`); only conv, depthwise conv, add, concat, ReLU and mean appear, all of which the Edge
TPU, TFLite Micro and XNNPACK (float and int8) support.

**Shallow + deep heads**: the stage-2 output feeds a shallow head (global average pool -> 1x1 -> BNNeck ->
classifier) trained jointly with the deep head (same losses on both, summed). The test feature is the deep BN
feature (the shallow head is deep supervision that regularises the middle of the network; it is not exported).

Sizes: width 1.0 at 256x128 has 2.26M parameters without the ID classifier (+0.38M with 751 IDs) and 0.84 GMAC
(measured by `mobilereid info sclnet`). ``width`` scales every channel count; ``img_size`` can be any multiple
of 32 (128x64 and 64x32 for microcontrollers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class SCLNetConfig:
    img_size: tuple[int, int] = (256, 128)
    width: float = 1.0
    channels: tuple[int, ...] = (64, 256, 384, 512)  # stem, stage1, stage2, stage3 at width 1.0
    units: tuple[int, ...] = (2, 2, 2)
    feature_dim: int = 512
    shallow_head: bool = True
    num_classes: int = 0

    def __post_init__(self):
        self.img_size = tuple(self.img_size)
        self.channels = tuple(self.channels)
        self.units = tuple(self.units)
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        h, w = self.img_size
        if h % 32 or w % 32:
            raise ValueError(f"SCL-net input size must be multiples of 32, got {h}x{w}")

    def ch(self, i: int) -> int:
        return max(8, int(round(self.channels[i] * self.width / 8)) * 8)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"], d["channels"], d["units"] = list(self.img_size), list(self.channels), list(self.units)
        return d


def conv_bn(
    cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1, relu: bool = True
) -> nn.Sequential:
    layers = [
        nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LightConv(nn.Module):
    """1x1 pointwise then depthwise 3x3 (optionally dilated), BN, ReLU."""

    def __init__(self, c: int, dilation: int = 1):
        super().__init__()
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.dw = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.dw(self.pw(x))))


class SCUnit(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int = 3):
        super().__init__()
        mid = max(8, cout // 4)
        self.reduce = conv_bn(cin, mid, 1)
        self.chain_a = nn.ModuleList(LightConv(mid, 1) for _ in range(depth))
        self.chain_b = nn.ModuleList(LightConv(mid, 2) for _ in range(depth))
        self.fuse = nn.ModuleList(nn.Conv2d(mid, cout, 1, bias=False) for _ in range(depth))
        self.fuse_bn = nn.BatchNorm2d(cout)
        self.shortcut = None if cin == cout else conv_bn(cin, cout, 1, relu=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x0 = self.reduce(x)
        a, b = [], []
        ha, hb = x0, x0
        for la, lb in zip(self.chain_a, self.chain_b):
            ha, hb = la(ha), lb(hb)
            a.append(ha)
            b.append(hb)
        combined = [a[t] + b[len(b) - 1 - t] for t in range(len(a))]
        y = self._fuse(combined)
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(y + identity)

    def _fuse(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """A 1x1 conv over concat(parts), written as the sum of one 1x1 conv per part: the same function and MACs,
        but no channel Concat in exported graphs (onnx2tf infers layouts heuristically and mis-places a channel
        concat when a channel count equals a spatial size) and every conv keeps constant weights (XNNPACK
        delegates only convs with constant weights)."""
        return self.fuse_bn(sum(conv(p) for conv, p in zip(self.fuse, parts)))


class AvgPool2x2(nn.Module):
    """2x2 average pooling with stride 2, written as a fixed depthwise convolution (every weight 1/4).

    The same numbers as ``nn.AvgPool2d(2, 2)``, but exported graphs then hold DEPTHWISE_CONV_2D instead of
    AVERAGE_POOL_2D: XNNPACK's int8 path does not take AVERAGE_POOL_2D, and the benchmark measured the int8 SCL-net
    split into 3 delegate partitions with both transitions on LiteRT's own kernels. 1/4 is exact in int8
    (per-channel scale 0.25/127, weight 127). The kernel is a non-persistent buffer: state dicts are unchanged.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", torch.full((channels, 1, 2, 2), 0.25), persistent=False)

    def forward(self, x):
        return nn.functional.conv2d(x, self.kernel, stride=2, groups=self.kernel.shape[0])


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv_bn(cin, cout, 1), AvgPool2x2(cout))


class Head(nn.Module):
    """Global average pool -> 1x1 conv embedding -> BNNeck (-> classifier during training)."""

    def __init__(self, cin: int, dim: int, num_classes: int):
        super().__init__()
        self.embed = conv_bn(cin, dim, 1)
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None

    def forward(self, x):
        feat = self.embed(x.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return feat, self.bottleneck(feat)


class SCLNet(nn.Module):
    def __init__(self, cfg: SCLNetConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, c3 = (cfg.ch(i) for i in range(4))
        dim = max(16, int(round(cfg.feature_dim * min(cfg.width, 1.0))))
        self.stem = nn.Sequential(conv_bn(3, c0 // 2, 3, stride=2), conv_bn(c0 // 2, c0, 3, stride=2))
        self.stage1 = self._stage(c0, c1, cfg.units[0])
        self.trans1 = Transition(c1, c1)
        self.stage2 = self._stage(c1, c2, cfg.units[1])
        self.trans2 = Transition(c2, c2)
        self.stage3 = self._stage(c2, c3, cfg.units[2])
        self.head = Head(c3, dim, cfg.num_classes)
        self.shallow = Head(c2, dim // 2, cfg.num_classes) if cfg.shallow_head else None
        self._dim = dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)

    @property
    def feature_dim(self) -> int:
        return self._dim

    @staticmethod
    def _stage(cin: int, cout: int, n: int) -> nn.Sequential:
        return nn.Sequential(*[SCUnit(cin if i == 0 else cout, cout) for i in range(n)])

    def forward(self, x: torch.Tensor, cam: torch.Tensor | None = None):
        x = self.stage1(self.stem(x))
        mid = self.stage2(self.trans1(x))
        x = self.stage3(self.trans2(mid))
        feat, bn = self.head(x)
        if not self.training:
            return bn
        feats, logits = [feat], []
        if self.head.classifier is not None:
            logits.append(self.head.classifier(bn))
        if self.shallow is not None:
            sfeat, sbn = self.shallow(mid)
            feats.append(sfeat)
            if self.shallow.classifier is not None:
                logits.append(self.shallow.classifier(sbn))
        return logits, feats
