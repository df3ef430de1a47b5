"""fast-reid's strong baselines: BoT (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
Re-identification", CVPRW 2019) and SBS (fast-reid's "stronger baseline", He et al., arXiv 2006.02631), on
ResNet-50 or ResNet-50-IBN-a (Pan et al., ECCV 2018), laid out key for key like fast-reid's ``Baseline`` (backbone +
EmbeddingHead; its public code read as documentation) so its checkpoints import without renaming.

What the weights do not say, and what is chosen here (each recorded in the config, so every later command and every
artifact sidecar uses it):

* **Pixel statistics.** fast-reid normalises inside the model, on 0-255 input, with mean 123.675/116.28/103.53 and std
  58.395/57.12/57.375: exactly ImageNet's statistics times 255, so the model here takes the usual 0-1 image with
  ImageNet mean/std; an import reads the checkpoint's own ``pixel_mean``/``pixel_std`` buffers and refuses options
  that disagree with them.
* **Stem max pool.** fast-reid's ResNet stem pooled with ``MaxPool2d(3, 2, padding=1)`` until November 2020 and with
  ``ceil_mode=True, padding=0`` since; both give the same output size at 256x128 but different numbers, and weights
  cannot tell them apart: ``maxpool = "ceil"`` (today's fast-reid, the default) or ``"legacy"``.
* **Last stride** (1 in BoT and SBS) and the input size (256x128) are options, recorded.
* **BNNeck.** The test feature is the pooled feature after the BNNeck (a BatchNorm with frozen bias), 2048-d: what
  fast-reid's EmbeddingHead returns at test time whatever its training-time NECK_FEAT.
* **SBS** adds non-local blocks (Wang et al., CVPR 2018; 2 after the last blocks of layer2 and 3 of layer3 in
  ResNet-50, fast-reid's ``non_layers = [0, 2, 3, 0]``) and generalised-mean pooling with a learnable exponent
  (Radenovic et al., TPAMI 2019; p starts at 3, features clamped at 1e-6).
* **IBN-a**: the first BN of every bottleneck in layer1-3 becomes InstanceNorm (affine) on the first half of the
  channels and BN on the rest, concatenated in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD, checked_pixel_stats

MAXPOOLS = ("ceil", "legacy")
POOLINGS = ("avg", "gem")


@dataclass
class ResNetReIDConfig:
    img_size: tuple[int, int] = (256, 128)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottlenecks per stage (ResNet-50)
    base_width: int = 64  # stem channels; stage i has base_width * 2**i bottleneck planes, 4x that out
    last_stride: int = 1
    ibn: bool = False
    non_local: tuple[int, ...] = (0, 0, 0, 0)  # non-local blocks after the last blocks of each stage
    non_local_inter: int = 1  # inner channels of a non-local block (fast-reid's computes 1, whatever the width)
    pooling: str = "avg"  # avg | gem
    maxpool: str = "ceil"  # ceil (fast-reid since Nov 2020) | legacy (padding 1)
    num_classes: int = 0
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        self.img_size, self.layers, self.non_local = tuple(self.img_size), tuple(self.layers), tuple(self.non_local)
        self.pixel_mean, self.pixel_std = checked_pixel_stats(self.pixel_mean, self.pixel_std)
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers needs 4 stage depths >= 1, got {self.layers}")
        if len(self.non_local) != 4 or any(not 0 <= n <= d for n, d in zip(self.non_local, self.layers)):
            raise ValueError(f"non_local needs 4 counts, each between 0 and its stage's depth, got {self.non_local}")
        if self.base_width < 2 or self.base_width % 2:
            raise ValueError(f"base_width must be an even number >= 2, got {self.base_width}")
        if self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if self.non_local_inter < 1:
            raise ValueError(f"non_local_inter must be >= 1, got {self.non_local_inter}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.maxpool not in MAXPOOLS:
            raise ValueError(f"maxpool must be one of {', '.join(MAXPOOLS)}, got {self.maxpool!r}")
        h, w = self.img_size
        if h < 32 or w < 32:
            raise ValueError(f"the ResNet input must be at least 32x32, got {h}x{w}")

    @property
    def feature_dim(self) -> int:
        return self.base_width * 8 * 4

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("img_size", "layers", "non_local", "pixel_mean", "pixel_std"):
            d[k] = list(d[k])
        return d


class IBN(nn.Module):
    """IBN-a: affine InstanceNorm on the first ``planes // 2`` channels, BN on the rest."""

    def __init__(self, planes: int):
        super().__init__()
        self.half = planes // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        return torch.cat((self.IN(x[:, : self.half]), self.BN(x[:, self.half :])), dim=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (4x planes), BN after each, ReLU, projection shortcut."""

    def __init__(self, cin: int, planes: int, stride: int = 1, ibn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class NonLocal(nn.Module):
    """Embedded-dot-product non-local block: y = (theta(x)^T phi(x) / N) g(x), z = x + BN(W y).

    Computed as y = theta(x) . mean over positions of (phi(x) g(x)^T), the same sum regrouped (associativity), which
    for fast-reid's one inner channel is two elementwise products and a mean: no N x N matrix, no reshapes (onnx2tf
    mis-converts the reshapes of the matrix form)."""

    def __init__(self, c: int, inter: int):
        super().__init__()
        self.inter = inter
        self.g = nn.Conv2d(c, inter, 1)
        self.theta = nn.Conv2d(c, inter, 1)
        self.phi = nn.Conv2d(c, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, c, 1), nn.BatchNorm2d(c))
        nn.init.zeros_(self.W[1].weight)  # the block starts as the identity
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        g, theta, phi = self.g(x), self.theta(x), self.phi(x)
        if self.inter == 1:
            y = theta * (phi * g).mean(dim=(2, 3), keepdim=True)
        else:
            m = torch.einsum("bchw,bkhw->bck", phi, g) / (x.shape[2] * x.shape[3])
            y = torch.einsum("bchw,bck->bkhw", theta, m)
        return x + self.W(y)


class Backbone(nn.Module):
    def __init__(self, cfg: ResNetReIDConfig):
        super().__init__()
        w = cfg.base_width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        legacy = cfg.maxpool == "legacy"
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1 if legacy else 0, ceil_mode=not legacy)
        cin = w
        strides = (1, 2, 2, cfg.last_stride)
        for i, (n, stride) in enumerate(zip(cfg.layers, strides)):
            planes = w * 2**i
            blocks = [
                Bottleneck(cin if b == 0 else planes * 4, planes, stride if b == 0 else 1, cfg.ibn and i < 3)
                for b in range(n)
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes * 4
            if cfg.non_local[i]:
                setattr(
                    self,
                    f"NL_{i + 1}",
                    nn.ModuleList(NonLocal(cin, cfg.non_local_inter) for _ in range(cfg.non_local[i])),
                )
        # a stage's non-local blocks follow its last blocks, in order (fast-reid's NL_k_idx)
        self.nl_after = [sorted(n - 1 - j for j in range(k)) for n, k in zip(cfg.layers, cfg.non_local)]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i, after in enumerate(self.nl_after):
            for b, block in enumerate(getattr(self, f"layer{i + 1}")):
                x = block(x)
                if b in after:
                    x = getattr(self, f"NL_{i + 1}")[after.index(b)](x)
        return x


class GeneralizedMeanPooling(nn.Module):
    """GeM with a learnable exponent: (mean(clamp(x, eps)^p))^(1/p), pooled to (B, C)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class EmbeddingHead(nn.Module):
    def __init__(self, cfg: ResNetReIDConfig):
        super().__init__()
        dim = cfg.feature_dim
        self.pool_layer = GeneralizedMeanPooling() if cfg.pooling == "gem" else None
        # fast-reid's BatchNorm2d on the pooled (B, C, 1, 1) map, as a BatchNorm1d on (B, C): the same state-dict
        # keys and numbers, and a graph onnx2tf converts (it mis-lays the 1x1 map out)
        self.bottleneck = nn.Sequential(nn.BatchNorm1d(dim))
        self.bottleneck[0].bias.requires_grad_(False)  # BNNeck: the bias is frozen (Luo et al.)
        self.classifier = nn.Linear(dim, cfg.num_classes, bias=False) if cfg.num_classes > 0 else None

    def forward(self, features):
        pooled = features.mean(dim=(2, 3)) if self.pool_layer is None else self.pool_layer(features)
        return pooled, self.bottleneck(pooled)


class ResNetReID(nn.Module):
    family = "resnet"

    def __init__(self, cfg: ResNetReIDConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.heads = EmbeddingHead(cfg)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def forward(self, x: torch.Tensor, cam: torch.Tensor | None = None):
        feat, neck = self.heads(self.backbone(x))
        if not self.training:
            return neck
        logits = [self.heads.classifier(neck)] if self.heads.classifier is not None else []
        return logits, [feat]
