"""Test oracle for the CNN imports, written from the papers and the sources' published key layouts, independent of
mobilereid/models: random state dicts in torchreid's OSNet / fast-reid's Baseline layout, and functional forward
passes over those dicts (torch.nn.functional only, no nn.Module).

OSNet (Zhou et al., ICCV 2019; AIN: TPAMI 2021): stem 7x7/2 + norm + ReLU, max pool 3/2 pad 1; omni-scale blocks
(1x1 reduce to out/4, streams of 1..4 lite 3x3 layers gated by ONE shared gate, 1x1 expand + BN, projection
shortcut, add, ReLU); 1x1 + 2x2 average-pool transitions after stages 2 and 3; 1x1 conv5, global average pool,
Linear + BN1d + ReLU. fast-reid BoT/SBS (Luo et al. 2019, He et al. 2020): normalisation of 0-255 pixels inside the
model, ResNet-50 bottlenecks (stride on the 3x3), IBN-a on bn1 of layer1-3, non-local blocks with one inner channel
after the last blocks of layer2/3, GeM or average pooling, BNNeck.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

AIN_PATTERN = ((True, True), (False, True), (True, False))
EPS = 1e-5


class Weights:
    """A seeded generator of tensors, kept small enough that a deep random network stays O(1)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}

    def conv(self, key: str, cout: int, cin: int, k: int, bias: bool = False, gain: float = 1.0):
        self.sd[key + ".weight"] = torch.randn(cout, cin, k, k, generator=self.g) * gain * (2.0 / (cin * k * k)) ** 0.5
        if bias:
            self.sd[key + ".bias"] = torch.randn(cout, generator=self.g) * 0.1

    def bn(self, key: str, c: int, scale: float = 1.0):
        u = lambda: torch.rand(c, generator=self.g)  # noqa: E731
        self.sd.update(
            {
                key + ".weight": (0.5 + u()) * scale,
                key + ".bias": torch.randn(c, generator=self.g) * 0.1,
                key + ".running_mean": torch.randn(c, generator=self.g) * 0.1,
                key + ".running_var": 0.5 + u(),
                key + ".num_batches_tracked": torch.tensor(7),
            }
        )

    def inorm(self, key: str, c: int):
        self.sd.update(
            {
                key + ".weight": 0.5 + torch.rand(c, generator=self.g),
                key + ".bias": torch.randn(c, generator=self.g) * 0.1,
            }
        )

    def linear(self, key: str, cout: int, cin: int, bias: bool = True):
        self.sd[key + ".weight"] = torch.randn(cout, cin, generator=self.g) * (1.0 / cin) ** 0.5
        if bias:
            self.sd[key + ".bias"] = torch.randn(cout, generator=self.g) * 0.1


def _norm(x, sd, key):
    if key + ".running_mean" in sd:
        return F.batch_norm(
            x,
            sd[key + ".running_mean"],
            sd[key + ".running_var"],
            sd[key + ".weight"],
            sd[key + ".bias"],
            False,
            0.0,
            EPS,
        )
    return F.instance_norm(x, weight=sd[key + ".weight"], bias=sd[key + ".bias"], eps=EPS)


# ---------------------------------------------------------------- OSNet (torchreid layout)


def osnet_state_dict(channels, layers=(2, 2, 2), norm="bn", feature_dim=512, classes=10, seed=0) -> dict:
    w = Weights(seed)
    c = channels
    w.conv("conv1.conv", c[0], 3, 7)
    (w.inorm if norm in ("ibn", "ain") else w.bn)("conv1.bn", c[0])
    ain = norm == "ain"
    for i, stage in enumerate(("conv2", "conv3", "conv4")):
        for b in range(layers[i]):
            p, cin, cout = f"{stage}.{b}.", (c[i] if b == 0 else c[i + 1]), c[i + 1]
            mid = cout // 4
            w.conv(p + "conv1.conv", mid, cin, 1)
            w.bn(p + "conv1.bn", mid)
            for t in range(1, 5):
                for m in range(t):
                    lp = (
                        f"conv2.{t - 1}.layers.{m}." if ain else ("conv2a." if t == 1 else f"conv2{'abcd'[t - 1]}.{m}.")
                    )
                    w.conv(p + lp + "conv1", mid, mid, 1)
                    w.conv(p + lp + "conv2", mid, 1, 3)
                    w.bn(p + lp + "bn", mid)
            w.conv(p + "gate.fc1", mid // 16 or 1, mid, 1, bias=True)
            w.conv(p + "gate.fc2", mid, mid // 16 or 1, 1, bias=True)
            residual_in = ain and AIN_PATTERN[i][b]
            w.conv(p + "conv3.conv", cout, mid, 1, gain=0.5)
            if not residual_in:
                w.bn(p + "conv3.bn", cout, scale=0.5)
            if cin != cout:
                w.conv(p + "downsample.conv", cout, cin, 1)
                w.bn(p + "downsample.bn", cout)
            if residual_in or (norm == "ibn" and i == 0):
                w.inorm(p + "IN", cout)
        if i < 2:
            tp = f"pool{i + 2}.0." if ain else f"{stage}.{layers[i]}.0."
            w.conv(tp + "conv", c[i + 1], c[i + 1], 1)
            w.bn(tp + "bn", c[i + 1])
    w.conv("conv5.conv", c[3], c[3], 1)
    w.bn("conv5.bn", c[3])
    w.linear("fc.0", feature_dim, c[3])
    w.bn("fc.1", feature_dim)
    if classes:
        w.linear("classifier", classes, feature_dim)
    return w.sd


def _conv_norm_relu(x, sd, key, stride=1, padding=0, relu=True):
    x = _norm(F.conv2d(x, sd[key + ".conv.weight"], stride=stride, padding=padding), sd, key + ".bn")
    return F.relu(x) if relu else x


def _lite(x, sd, key):
    x = F.conv2d(x, sd[key + ".conv1.weight"])
    x = F.conv2d(x, sd[key + ".conv2.weight"], padding=1, groups=x.shape[1])
    return F.relu(_norm(x, sd, key + ".bn"))


def _gate(x, sd, key):
    s = F.adaptive_avg_pool2d(x, 1)
    s = F.relu(F.conv2d(s, sd[key + ".fc1.weight"], sd[key + ".fc1.bias"]))
    return x * torch.sigmoid(F.conv2d(s, sd[key + ".fc2.weight"], sd[key + ".fc2.bias"]))


def _stream_keys(sd, p):
    if p + "conv2a.conv1.weight" in sd:
        return [[p + "conv2a"]] + [[f"{p}conv2{l}.{m}" for m in range(t)] for t, l in ((2, "b"), (3, "c"), (4, "d"))]
    return [[f"{p}conv2.{t}.layers.{m}" for m in range(t + 1)] for t in range(4)]


def osnet_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    x = _conv_norm_relu(x, sd, "conv1", stride=2, padding=3)
    x = F.max_pool2d(x, 3, 2, 1)
    for i, stage in enumerate(("conv2", "conv3", "conv4")):
        b = 0
        while f"{stage}.{b}.conv1.conv.weight" in sd:
            p = f"{stage}.{b}."
            h = _conv_norm_relu(x, sd, p + "conv1")
            total = 0
            for keys in _stream_keys(sd, p):
                s = h
                for k in keys:
                    s = _lite(s, sd, k)
                total = total + _gate(s, sd, p + "gate")
            y = F.conv2d(total, sd[p + "conv3.conv.weight"])
            inside = p + "conv3.bn.weight" not in sd
            y = _norm(y, sd, p + ("IN" if inside else "conv3.bn"))
            shortcut = _conv_norm_relu(x, sd, p + "downsample", relu=False) if p + "downsample.conv.weight" in sd else x
            out = y + shortcut
            if not inside and p + "IN.weight" in sd:
                out = _norm(out, sd, p + "IN")
            x = F.relu(out)
            b += 1
        tp = f"{stage}.{b}.0" if f"{stage}.{b}.0.conv.weight" in sd else f"pool{i + 2}.0"
        if tp + ".conv.weight" in sd:
            x = F.avg_pool2d(_conv_norm_relu(x, sd, tp), 2, 2)
    x = _conv_norm_relu(x, sd, "conv5")
    v = F.adaptive_avg_pool2d(x, 1).flatten(1)
    v = F.linear(v, sd["fc.0.weight"], sd["fc.0.bias"])
    return F.relu(
        F.batch_norm(
            v, sd["fc.1.running_mean"], sd["fc.1.running_var"], sd["fc.1.weight"], sd["fc.1.bias"], False, 0.0, EPS
        )
    )


# ---------------------------------------------------------------- fast-reid Baseline (BoT / SBS)

PIXEL_MEAN_255 = (123.675, 116.28, 103.53)
PIXEL_STD_255 = (58.395, 57.12, 57.375)


def fastreid_state_dict(
    layers=(3, 4, 6, 3), width=64, ibn=False, non_local=(0, 0, 0, 0), gem=False, old_keys=False, classifier=True, seed=0
) -> dict:
    w = Weights(seed)
    w.conv("backbone.conv1", width, 3, 7)
    w.bn("backbone.bn1", width)
    cin = width
    for i, n in enumerate(layers):
        planes = width * 2**i
        for b in range(n):
            p = f"backbone.layer{i + 1}.{b}."
            w.conv(p + "conv1", planes, cin, 1)
            if ibn and i < 3:
                w.inorm(p + "bn1.IN", planes // 2)
                w.bn(p + "bn1.BN", planes - planes // 2)
            else:
                w.bn(p + "bn1", planes)
            w.conv(p + "conv2", planes, planes, 3)
            w.bn(p + "bn2", planes)
            w.conv(p + "conv3", planes * 4, planes, 1, gain=0.5)
            w.bn(p + "bn3", planes * 4, scale=0.3)
            if b == 0:
                w.conv(p + "downsample.0", planes * 4, cin, 1)
                w.bn(p + "downsample.1", planes * 4)
            cin = planes * 4
        for j in range(non_local[i]):
            p = f"backbone.NL_{i + 1}.{j}."
            for part in ("g", "theta", "phi"):  # small: the block is cubic in its input, near identity when trained
                w.conv(p + part, 1, cin, 1, bias=True, gain=0.1)
            w.conv(p + "W.0", cin, 1, 1, bias=True)
            w.bn(p + "W.1", cin, scale=0.3)
    neck = "heads.bnneck" if old_keys else "heads.bottleneck.0"
    w.bn(neck, cin)
    if gem:
        w.sd["heads.pool_layer.p"] = torch.tensor([3.0 + torch.rand(1, generator=w.g).item()])
    if classifier:
        w.sd["heads.classifier.weight" if old_keys else "heads.weight"] = torch.randn(11, cin, generator=w.g)
    w.sd["pixel_mean"] = torch.tensor(PIXEL_MEAN_255).view(1, 3, 1, 1)
    w.sd["pixel_std"] = torch.tensor(PIXEL_STD_255).view(1, 3, 1, 1)
    return w.sd


def fastreid_forward(sd: dict, x255: torch.Tensor, last_stride=1, maxpool="ceil") -> torch.Tensor:
    """fast-reid's Baseline at test time on 0-255 pixels: the BNNeck output."""
    x = (x255 - sd["pixel_mean"]) / sd["pixel_std"]
    x = F.relu(_norm(F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3), sd, "backbone.bn1"))
    x = F.max_pool2d(x, 3, 2, padding=1) if maxpool == "legacy" else F.max_pool2d(x, 3, 2, padding=0, ceil_mode=True)
    for i in range(4):
        n = len({k.split(".")[2] for k in sd if k.startswith(f"backbone.layer{i + 1}.")})
        nl = len({k.split(".")[2] for k in sd if k.startswith(f"backbone.NL_{i + 1}.")})
        nl_at = sorted(n - 1 - j for j in range(nl))
        for b in range(n):
            p = f"backbone.layer{i + 1}.{b}."
            stride = (1, 2, 2, last_stride)[i] if b == 0 else 1
            h = F.conv2d(x, sd[p + "conv1.weight"])
            if p + "bn1.IN.weight" in sd:
                half = sd[p + "bn1.IN.weight"].numel()
                h = torch.cat([_norm(h[:, :half], sd, p + "bn1.IN"), _norm(h[:, half:], sd, p + "bn1.BN")], 1)
            else:
                h = _norm(h, sd, p + "bn1")
            h = F.relu(_norm(F.conv2d(F.relu(h), sd[p + "conv2.weight"], stride=stride, padding=1), sd, p + "bn2"))
            h = _norm(F.conv2d(h, sd[p + "conv3.weight"]), sd, p + "bn3")
            if p + "downsample.0.weight" in sd:
                x = _norm(F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride), sd, p + "downsample.1")
            x = F.relu(h + x)
            if b in nl_at:
                q = f"backbone.NL_{i + 1}.{nl_at.index(b)}."
                bsz, _, hh, ww = x.shape
                proj = lambda part: F.conv2d(x, sd[q + part + ".weight"], sd[q + part + ".bias"]).reshape(bsz, 1, -1)  # noqa: E731
                g, th, ph = proj("g").permute(0, 2, 1), proj("theta").permute(0, 2, 1), proj("phi")
                f = torch.matmul(th, ph)
                y = torch.matmul(f / f.shape[-1], g).permute(0, 2, 1).reshape(bsz, 1, hh, ww)
                y = _norm(F.conv2d(y, sd[q + "W.0.weight"], sd[q + "W.0.bias"]), sd, q + "W.1")
                x = y + x
    if "heads.pool_layer.p" in sd:
        p = sd["heads.pool_layer.p"]
        pooled = F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).pow(1.0 / p)
    else:
        pooled = F.adaptive_avg_pool2d(x, 1)
    neck = "heads.bnneck" if "heads.bnneck.weight" in sd else "heads.bottleneck.0"
    return _norm(pooled, sd, neck).flatten(1)
