"""Test oracle: TransReID's inference (He et al., ICCV 2021) written from the paper and its public code (read as
documentation), as plain functions over a TransReID-layout state dict (``base.*``, ``b1.*``, ``b2.*``,
``bottleneck*``). Independent of `mobilereid.models.vit` on purpose: the importer must reproduce this."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _block(sd, p, t, heads, qk_scale):
    B, N, C = t.shape
    ln = lambda z, q: F.layer_norm(z, (C,), sd[q + ".weight"], sd[q + ".bias"], 1e-6)
    lin = lambda z, q: F.linear(z, sd[q + ".weight"], sd.get(q + ".bias"))
    d = C // heads
    qkv = lin(ln(t, p + ".norm1"), p + ".attn.qkv").reshape(B, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    att = (qkv[0] @ qkv[1].transpose(-2, -1)) * (qk_scale or d**-0.5)
    t = t + lin((att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(B, N, C), p + ".attn.proj")
    h = F.gelu(lin(ln(t, p + ".norm2"), p + ".mlp.fc1"))
    return t + lin(h, p + ".mlp.fc2")


def _bn(sd, p, x):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def transreid_forward(
    sd, x, cam, *, heads, stride, jpm, neck_feat="before", sie_coe=3.0, shift=5, groups=2, divide=4, qk_scale=None
):
    """Test-time feature of TransReID's build_transformer (jpm=False) / build_transformer_local (jpm=True)."""
    C = sd["base.cls_token"].shape[-1]
    B = x.shape[0]
    t = (
        F.conv2d(x, sd["base.patch_embed.proj.weight"], sd["base.patch_embed.proj.bias"], stride=stride)
        .flatten(2)
        .transpose(1, 2)
    )
    t = torch.cat([sd["base.cls_token"].expand(B, -1, -1), t], 1) + sd["base.pos_embed"]
    if "base.sie_embed" in sd:
        t = t + sie_coe * sd["base.sie_embed"][cam]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("base.blocks."))
    ln = lambda z, q: F.layer_norm(z, (C,), sd[q + ".weight"], sd[q + ".bias"], 1e-6)
    if not jpm:
        for i in range(depth):
            t = _block(sd, f"base.blocks.{i}", t, heads, qk_scale)
        g = ln(t, "base.norm")[:, 0]
        return g if neck_feat == "before" else _bn(sd, "bottleneck", g)
    for i in range(depth - 1):  # the base runs all but its last block and returns every token, un-normalised
        t = _block(sd, f"base.blocks.{i}", t, heads, qk_scale)
    g = ln(_block(sd, "b1.0", t, heads, qk_scale), "b1.1")[:, 0]
    # shift: the patch tokens from `shift` on, then tokens 1..shift-1;
    # shuffle: split into `groups` rows, read by columns
    s = torch.cat([t[:, shift:], t[:, 1:shift]], 1)
    if s.shape[1] % groups:
        s = torch.cat([s, s[:, -2:-1]], 1)
    s = s.reshape(B, groups, -1, C).transpose(1, 2).reshape(B, -1, C)
    n = (t.shape[1] - 1) // divide
    local = [
        ln(_block(sd, "b2.0", torch.cat([t[:, :1], s[:, k * n : (k + 1) * n]], 1), heads, qk_scale), "b2.1")[:, 0]
        for k in range(4)
    ]
    if neck_feat == "after":
        g, local = _bn(sd, "bottleneck", g), [_bn(sd, f"bottleneck_{k + 1}", f) for k, f in enumerate(local)]
    return torch.cat([g] + [f / 4 for f in local], 1)


def random_transreid_state_dict(
    *, C=64, depth=3, patch=16, grid=(5, 2), cameras=6, jpm=True, classes=11, qkv_bias=True, mlp=4, seed=0
):
    """A TransReID-layout state dict with random weights (and non-trivial BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.2: torch.randn(*s, generator=g) * std
    sd = {
        "base.cls_token": r(1, 1, C),
        "base.pos_embed": r(1, 1 + grid[0] * grid[1], C),
        "base.patch_embed.proj.weight": r(C, 3, patch, patch, std=0.05),
        "base.patch_embed.proj.bias": r(C),
        "base.fc.weight": r(1000, C),
        "base.fc.bias": r(1000),
    }
    if cameras:
        sd["base.sie_embed"] = r(cameras, 1, C)

    def block(p):
        out = {
            f"{p}.norm1.weight": 1 + r(C),
            f"{p}.norm1.bias": r(C),
            f"{p}.attn.qkv.weight": r(3 * C, C),
            f"{p}.attn.proj.weight": r(C, C),
            f"{p}.attn.proj.bias": r(C),
            f"{p}.norm2.weight": 1 + r(C),
            f"{p}.norm2.bias": r(C),
            f"{p}.mlp.fc1.weight": r(mlp * C, C),
            f"{p}.mlp.fc1.bias": r(mlp * C),
            f"{p}.mlp.fc2.weight": r(C, mlp * C),
            f"{p}.mlp.fc2.bias": r(C),
        }
        if qkv_bias:
            out[f"{p}.attn.qkv.bias"] = r(3 * C)
        return out

    def norm(p):
        return {f"{p}.weight": 1 + r(C), f"{p}.bias": r(C)}

    def bn(p):
        return {
            f"{p}.weight": 1 + r(C),
            f"{p}.bias": torch.zeros(C),
            f"{p}.running_mean": r(C),
            f"{p}.running_var": 0.5 + r(C).abs(),
            f"{p}.num_batches_tracked": torch.tensor(100),
        }

    for i in range(depth):
        sd.update(block(f"base.blocks.{i}"))
    sd.update(norm("base.norm"))
    sd.update(bn("bottleneck"))
    sd["classifier.weight"] = r(classes, C)
    if jpm:
        sd.update(block("b1.0"))
        sd.update(norm("b1.1"))
        sd.update(block("b2.0"))
        sd.update(norm("b2.1"))
        for k in range(1, 5):
            sd.update(bn(f"bottleneck_{k}"))
            sd[f"classifier_{k}.weight"] = r(classes, C)
    return sd
