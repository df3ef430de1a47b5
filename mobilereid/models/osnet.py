"""OSNet, the omni-scale ReID CNN (Zhou et al., ICCV 2019) and its instance-normalised variants (OSNet-IBN, same
paper; OSNet-AIN, Zhou et al., TPAMI 2021), laid out so that torchreid's published weights load key for key.

The module names follow torchreid's ``osnet.py`` / ``osnet_ain.py`` (read as documentation: its state dicts are what
users hold), because an import that renames nothing cannot mis-map a tensor. The maths is the papers':

* stem: 7x7/2 conv (padding 3) + norm + ReLU, then a 3x3/2 max pool with padding 1 (the TFLite route writes its
  padding as zeros, export/tflite/onnx_rewrites.py);
* omni-scale block: 1x1 reduce to ``out / 4``; four streams of 1, 2, 3 and 4 lite 3x3 layers (1x1 conv, then
  depthwise 3x3, norm, ReLU); ONE unified aggregation gate shared by the four streams (global average pool, 1x1 conv
  with bias to ``mid / 16``, ReLU, 1x1 conv with bias, sigmoid) whose gated outputs are summed; 1x1 expand with BN and
  no ReLU; a 1x1 + BN projection of the input when the channel count changes; add; ReLU;
* transitions after stages 2 and 3: 1x1 conv + BN + ReLU, then 2x2 average pooling (inside the stage as its last
  module in OSNet, ``conv2.2``; separate ``pool2`` / ``pool3`` in OSNet-AIN);
* head: 1x1 conv5 + BN + ReLU, global average pooling, ``fc`` = Linear(c, 512) + BatchNorm1d + ReLU; the test
  feature is that 512-d vector, not normalised (the evaluator L2-normalises);
* IBN (``norm = "ibn"``): InstanceNorm (affine) in the stem instead of BN and after the residual add of every stage-2
  block; AIN (``norm = "ain"``): InstanceNorm in the stem and, in the blocks the paper's search chose, inside the
  residual branch in place of conv3's BN (``AIN_PATTERN``).

Inputs are RGB, 256x128, normalised with the ImageNet statistics, as torchreid trains them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD, checked_pixel_stats

NORMS = ("bn", "ibn", "ain")
# OSNet-AIN x1.0 (TPAMI 2021, its searched architecture): per stage, per block, whether IN sits in the residual
AIN_PATTERN = ((True, True), (False, True), (True, False))
WIDTHS = {
    "x1_0": (64, 256, 384, 512),
    "x0_75": (48, 192, 288, 384),
    "x0_5": (32, 128, 192, 256),
    "x0_25": (16, 64, 96, 128),
}


@dataclass
class OSNetConfig:
    img_size: tuple[int, int] = (256, 128)
    channels: tuple[int, ...] = WIDTHS["x1_0"]  # stem, stage 1 (conv2), stage 2 (conv3), stage 3 (conv4)
    layers: tuple[int, ...] = (2, 2, 2)  # blocks per stage
    feature_dim: int = 512
    norm: str = "bn"  # bn | ibn | ain
    gate_reduction: int = 16
    num_classes: int = 0
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        self.img_size, self.channels, self.layers = tuple(self.img_size), tuple(self.channels), tuple(self.layers)
        self.pixel_mean, self.pixel_std = checked_pixel_stats(self.pixel_mean, self.pixel_std)
        if len(self.channels) != 4 or len(self.layers) != 3 or min(self.layers) < 1:
            raise ValueError(
                f"OSNet needs 4 channel counts and 3 stage depths >= 1, got {self.channels} / {self.layers}"
            )
        if min(self.channels) < 4 or any(c % 4 for c in self.channels[1:]):
            raise ValueError(f"OSNet stage channels must be multiples of 4, got {self.channels}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.norm == "ain" and self.layers != (2, 2, 2):
            raise ValueError(f"OSNet-AIN has the searched 2-2-2 block pattern, got layers {self.layers}")
        h, w = self.img_size
        if h < 32 or w < 32:
            raise ValueError(f"OSNet input must be at least 32x32 (five halvings), got {h}x{w}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("img_size", "channels", "layers", "pixel_mean", "pixel_std"):
            d[k] = list(d[k])
        return d


class ConvLayer(nn.Module):
    """conv (no bias) + BN or affine InstanceNorm + ReLU; torchreid's ConvLayer / Conv1x1 / Conv3x3."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, padding: int = 0, instance_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.InstanceNorm2d(cout, affine=True) if instance_norm else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """1x1 conv + BN without ReLU (``bn=False``: the conv alone, the AIN block's IN follows)."""

    def __init__(self, cin: int, cout: int, bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout) if bn else None

    def forward(self, x):
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class LightConv3x3(nn.Module):
    """1x1 conv, depthwise 3x3 conv, BN, ReLU (the paper's Lite 3x3)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class LightConvStream(nn.Module):
    """OSNet-AIN's stream: ``depth`` lite 3x3 layers under ``layers``."""

    def __init__(self, c: int, depth: int):
        super().__init__()
        self.layers = nn.Sequential(*[LightConv3x3(c) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


class ChannelGate(nn.Module):
    """The unified aggregation gate: per-channel weights from the globally pooled stream output."""

    def __init__(self, c: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, c // reduction)
        self.fc1 = nn.Conv2d(c, hidden, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, c, 1, bias=True)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * w


class OSBlock(nn.Module):
    """The omni-scale residual bottleneck. ``layout = "osnet"`` names the streams conv2a..conv2d (torchreid's
    osnet.py), ``"ain"`` a list conv2.0..3 of streams (osnet_ain.py). ``post_in``: IBN's InstanceNorm after the add;
    ``residual_in``: AIN's InstanceNorm in the residual branch in place of conv3's BN."""

    def __init__(
        self,
        cin: int,
        cout: int,
        layout: str = "osnet",
        post_in: bool = False,
        residual_in: bool = False,
        gate_reduction: int = 16,
    ):
        super().__init__()
        mid = cout // 4
        self.layout = layout
        self.conv1 = ConvLayer(cin, mid, 1)
        if layout == "osnet":
            self.conv2a = LightConv3x3(mid)
            self.conv2b = nn.Sequential(*[LightConv3x3(mid) for _ in range(2)])
            self.conv2c = nn.Sequential(*[LightConv3x3(mid) for _ in range(3)])
            self.conv2d = nn.Sequential(*[LightConv3x3(mid) for _ in range(4)])
        else:
            self.conv2 = nn.ModuleList(LightConvStream(mid, t) for t in range(1, 5))
        self.gate = ChannelGate(mid, gate_reduction)
        self.conv3 = Conv1x1Linear(mid, cout, bn=not residual_in)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if (post_in or residual_in) else None
        self.post_in = post_in

    def streams(self):
        return (self.conv2a, self.conv2b, self.conv2c, self.conv2d) if self.layout == "osnet" else tuple(self.conv2)

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = sum(self.gate(stream(x1)) for stream in self.streams())
        x3 = self.conv3(x2)
        if self.IN is not None and not self.post_in:
            x3 = self.IN(x3)
        out = x3 + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None and self.post_in:
            out = self.IN(out)
        return F.relu(out)


def _transition(c: int) -> nn.Sequential:
    return nn.Sequential(ConvLayer(c, c, 1), nn.AvgPool2d(2, stride=2))


class OSNet(nn.Module):
    family = "osnet"

    def __init__(self, cfg: OSNetConfig):
        super().__init__()
        self.cfg = cfg
        c, n, ain = cfg.channels, cfg.layers, cfg.norm == "ain"
        self.conv1 = ConvLayer(3, c[0], 7, stride=2, padding=3, instance_norm=cfg.norm in ("ibn", "ain"))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layout = "ain" if ain else "osnet"

        def stage(i: int, transition_inside: bool) -> nn.Sequential:
            blocks = []
            for b in range(n[i]):
                blocks.append(
                    OSBlock(
                        c[i] if b == 0 else c[i + 1],
                        c[i + 1],
                        layout,
                        post_in=cfg.norm == "ibn" and i == 0,
                        residual_in=ain and AIN_PATTERN[i][b],
                        gate_reduction=cfg.gate_reduction,
                    )
                )
            if transition_inside:
                blocks.append(_transition(c[i + 1]))
            return nn.Sequential(*blocks)

        self.conv2 = stage(0, not ain)
        if ain:
            self.pool2 = _transition(c[1])
        self.conv3 = stage(1, not ain)
        if ain:
            self.pool3 = _transition(c[2])
        self.conv4 = stage(2, False)
        self.conv5 = ConvLayer(c[3], c[3], 1)
        self.fc = nn.Sequential(
            nn.Linear(c[3], cfg.feature_dim), nn.BatchNorm1d(cfg.feature_dim), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        self._init_weights()

    def _init_weights(self):
        """He initialisation of convolutions, unit norms, small classifier weights (as torchreid's _init_params)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def featuremaps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.maxpool(self.conv1(x)))
        if self.cfg.norm == "ain":
            x = self.pool2(x)
        x = self.conv3(x)
        if self.cfg.norm == "ain":
            x = self.pool3(x)
        return self.conv5(self.conv4(x))

    def forward(self, x: torch.Tensor, cam: torch.Tensor | None = None):
        v = self.fc(self.featuremaps(x).mean(dim=(2, 3)))
        if not self.training:
            return v
        return ([self.classifier(v)] if self.classifier is not None else []), [v]
