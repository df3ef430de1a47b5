"""TransReID-style ViT for ReID with patch elimination and windowed attention (written here; no timm dependency).

State-dict keys follow timm's ``vision_transformer.py`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm``) so timm, DeiT and TransReID
weights load after position-embedding resizing (`mobilereid.models.pretrained`). ReID parts follow TransReID
(He et al., ICCV 2021): overlapping patch embedding with stride s, an optional learned camera embedding added to
every token with weight lambda (3.0), a BNNeck after the class token, test feature = BN'd class token.

**Patch elimination** (Wang et al., ROBIO 2023, REFERENCE.md section 1). The paper does not say how patches
without person information are found. Two choices are implemented, both acting *before the first block* so every
block runs on fewer tokens (executed FLOPs fall roughly with the keep ratio; the attention products even faster):

* ``scorer="learned"``: a linear scorer on the patch embeddings, trained jointly with the ReID losses through a
  straight-through gate (kept tokens are multiplied by ``1 + s - s.detach()``, ``s = sigmoid(score)``: the forward
  value is unchanged, the scorer receives the loss gradient of each kept token). Costs C MACs per patch.
* ``scorer="contrast"``: parameter-free foreground statistics on the input image: a patch's score is the distance
  of its mean colour from the mean colour of the left and right border columns (an estimate of the background,
  since pedestrian crops are centred) plus its colour standard deviation (texture). Cheap and needs no training,
  but it is fooled by cluttered backgrounds.

Static shapes: a fixed count K = round(keep * N) per image (per window when windows are on), chosen by top-k on
the score and gathered with a one-hot matmul (`topk_onehot`, no TopK/Gather ops in exported graphs); position (and
camera) embeddings are added *before* the gather, which is the same as gathering them with the same indices.

**Windowed attention** (same paper). Patch rows are split into ``windows`` horizontal body stripes. Blocks before
``window_start`` run globally; from there each window is a separate token sequence with its own class token (the
global class token plus a learned per-window embedding) and runs its own transformer: ``window_weights="shared"``
reuses ``blocks.i`` (state dicts stay timm-compatible) and ``"separate"`` gives each window its own copy
(``window_blocks.w.j``). The window class tokens pass the final LayerNorm and are **averaged** into one embedding
(the embedding size stays C, so every consumer is unchanged). FLOPs of a block over windows of n_w tokens:
sum_w [(4+2r)(n_w+1)C^2 + 2(n_w+1)^2 C] versus (4+2r)NC^2 + 2N^2C globally (REFERENCE.md section 5).

**Imported TransReID models** (`mobilereid.models.importers`). TransReID's inference is reproduced exactly:
``qk_scale`` (its ``vit_small`` scales attention by 768^-0.5, not head_dim^-0.5); the SIE camera embedding, added
with its coefficient to every token, taken from the image's camera or, in exported artifacts that have no camera
input, from one camera baked in as a constant (``sie_camera``); ``neck_feat`` "before" (the feature before the
BNNeck, TransReID's test setting) or "after"; and the **JPM** branch (``jpm``): the last block and final LayerNorm
become the global branch, the tokens after block depth-2 are re-arranged by TransReID's shift (``jpm_shift`` tokens)
and patch shuffle (``jpm_groups`` groups, padded with the second-to-last token when the count does not divide),
cut into four parts of N // ``jpm_divide`` tokens, and each part with the class token runs through a second copy of
the last block and LayerNorm (``jpm_block``, ``jpm_norm``); the test feature concatenates the global feature and
the four local ones divided by 4, each before or after its own BNNeck. The re-arrangement is a static index
(`jpm_part_indices`), so exported graphs hold gathers with constant indices only.

**AMG hooks**: each attention layer has a per-layer head count (heads physically removed by
`mobilereid.compress.heads`) and an optional static ``kv_index``: the layer input is gathered *before* the K/V
projections, so only the kept key/value tokens are projected (REFERENCE.md section 2). Each MLP has a per-layer hidden
width (``mlp_hidden_per_layer``; units physically removed by `mobilereid.compress.mlp`).

**Norm layers** (``norm``): "layer" is ViT's LayerNorm (timm, DeiT and TransReID weights need it); "batch" trains
every LayerNorm's place with BatchNorm over the channels, pooled over batch and tokens (`TokenBatchNorm`, the
replacement studied by Yao et al. 2021, "Leveraging Batch Normalization for Vision Transformers", ICCVW). Why: at
inference a BatchNorm is a per-channel multiply-add with constants, so a full-integer graph holds no LayerNorm,
whose integer decomposition (mean, squared difference, rsqrt on one per-tensor scale) is what collapses a full-int8
LiteRT ViT (measured side by side: docs/results/2026-12-01-vit-batchnorm-int8.md).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import checked_pixel_stats


@dataclass
class ViTConfig:
    img_size: tuple[int, int] = (256, 128)
    patch_size: int = 16
    stride: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    gelu: str = "exact"  # "exact" (erf) or "tanh" (TFLite builtins only)
    norm: str = (
        "layer"  # "layer" (ViT's LayerNorm) or "batch" (TokenBatchNorm: an affine at inference, full-integer friendly)
    )
    num_classes: int = 0
    camera_num: int = 0
    camera_lambda: float = 3.0
    keep_ratio: float = 1.0  # patch elimination: fraction of patch tokens kept
    scorer: str = "learned"  # "learned" or "contrast"
    token_order: str = (
        "spatial"  # kept patch tokens in image order ("spatial") or best score first ("rank", before 2026-11)
    )
    windows: int = 1  # number of horizontal windows (1 = global attention everywhere)
    window_start: int = 0  # first block that runs per window
    window_weights: str = "shared"  # "shared" or "separate"
    heads_per_layer: list[int] | None = None  # after AMG head pruning
    kv_index: list[list[int] | None] | None = None  # after AMG K/V token pruning, per block (window blocks included)
    mlp_hidden_per_layer: list[int] | None = None  # after MLP hidden-unit pruning (compress/mlp.py), per block
    head_dim: int | None = None
    qk_scale: float | None = None  # attention scale; None = head_dim ** -0.5 (TransReID's vit_small: 768 ** -0.5)
    neck_feat: str = "after"  # test feature: "after" the BNNeck or "before" it (TransReID's NECK_FEAT)
    sie_camera: int | None = None  # camera whose SIE embedding is used when no camera is given (baked into exports)
    jpm: bool = False  # TransReID's jigsaw patch module (local branch)
    jpm_shift: int = 5  # TransReID SHIFT_NUM
    jpm_groups: int = 2  # TransReID SHUFFLE_GROUP
    jpm_divide: int = 4  # TransReID DEVIDE_LENGTH
    jpm_rearrange: bool = True  # TransReID RE_ARRANGE
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation the weights expect
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        self.img_size = tuple(self.img_size)
        self.pixel_mean, self.pixel_std = checked_pixel_stats(self.pixel_mean, self.pixel_std)
        if self.neck_feat not in ("before", "after"):
            raise ValueError(f"neck_feat must be 'before' or 'after', got {self.neck_feat!r}")
        if self.jpm and (self.windows > 1 or self.depth < 2):
            raise ValueError("jpm needs global attention (windows = 1) and depth >= 2")
        if self.jpm and not (1 <= self.jpm_groups and 1 <= self.jpm_divide and self.jpm_shift >= 1):
            raise ValueError("jpm_shift, jpm_groups and jpm_divide must be >= 1")
        if self.sie_camera is not None and not 0 <= self.sie_camera < max(self.camera_num, 1):
            raise ValueError(
                f"sie_camera must be between 0 and camera_num - 1 ({self.camera_num - 1}), got {self.sie_camera}"
            )
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")
        if self.norm not in ("layer", "batch"):
            raise ValueError(f"norm must be 'layer' or 'batch', got {self.norm!r}")
        if self.scorer not in ("learned", "contrast"):
            raise ValueError(f"scorer must be 'learned' or 'contrast', got {self.scorer!r}")
        if self.token_order not in ("spatial", "rank"):
            raise ValueError(f"token_order must be 'spatial' or 'rank', got {self.token_order!r}")
        if self.window_weights not in ("shared", "separate"):
            raise ValueError(f"window_weights must be 'shared' or 'separate', got {self.window_weights!r}")
        if self.windows < 1 or self.windows > self.grid[0]:
            raise ValueError(
                f"windows must be between 1 and the number of patch rows ({self.grid[0]}), got {self.windows}"
            )
        if not 0 <= self.window_start <= self.depth:
            raise ValueError(f"window_start must be between 0 and depth ({self.depth}), got {self.window_start}")
        if self.head_dim is None:
            self.head_dim = self.embed_dim // self.num_heads
        if self.heads_per_layer is None:
            self.heads_per_layer = [self.num_heads] * self.num_blocks
        if len(self.heads_per_layer) != self.num_blocks or min(self.heads_per_layer) < 1:
            raise ValueError(f"heads_per_layer needs {self.num_blocks} entries >= 1, got {self.heads_per_layer}")
        if self.kv_index is None:
            self.kv_index = [None] * self.num_blocks
        if self.mlp_hidden_per_layer is None:
            self.mlp_hidden_per_layer = [int(self.embed_dim * self.mlp_ratio)] * self.num_blocks
        if len(self.mlp_hidden_per_layer) != self.num_blocks or min(self.mlp_hidden_per_layer) < 1:
            raise ValueError(
                f"mlp_hidden_per_layer needs {self.num_blocks} entries >= 1, got {self.mlp_hidden_per_layer}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.img_size
        return (h - self.patch_size) // self.stride + 1, (w - self.patch_size) // self.stride + 1

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_blocks(self) -> int:
        """Attention blocks with their own weights: depth, plus the extra window copies when weights are separate."""
        if self.windows > 1 and self.window_weights == "separate":
            return self.window_start + self.windows * (self.depth - self.window_start)
        return self.depth

    def window_rows(self) -> list[np.ndarray]:
        return [r for r in np.array_split(np.arange(self.grid[0]), self.windows)]

    def token_groups(self) -> list[list[int]]:
        """Patch indices of each window (one group with every patch when windows == 1)."""
        gw = self.grid[1]
        return [[int(r) * gw + c for r in rows for c in range(gw)] for rows in self.window_rows()]

    def kept_per_group(self) -> list[int]:
        return [max(1, int(round(len(g) * self.keep_ratio))) for g in self.token_groups()]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        d["pixel_mean"], d["pixel_std"] = list(self.pixel_mean), list(self.pixel_std)
        return d

    def jpm_part_indices(self) -> list[list[int]]:
        """Token indices (into [cls] + N patch tokens after block depth-2) of JPM's four local parts.

        TransReID's shift: tokens shift..N followed by 1..shift-1 (the class token is left out); patch shuffle: the
        sequence (padded with its second-to-last token when the group count does not divide it) is viewed as
        (groups, L/groups) and read column by column; part k takes positions [k*p, (k+1)*p), p = N // divide."""
        n = sum(self.kept_per_group())
        if self.jpm_rearrange:
            seq = list(range(self.jpm_shift, n + 1)) + list(range(1, self.jpm_shift))
            if len(seq) % self.jpm_groups:
                seq.append(seq[-2])
            seq = np.array(seq).reshape(self.jpm_groups, -1).T.reshape(-1).tolist()
        else:
            seq = list(range(1, n + 1))
        p = n // self.jpm_divide
        if p < 1:
            raise ValueError(f"jpm: {n} patch tokens cannot be divided into parts of N // {self.jpm_divide}")
        return [seq[k * p : (k + 1) * p] for k in range(4)]


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        qkv_bias: bool = True,
        kv_index: list[int] | None = None,
        qk_scale: float | None = None,
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.scale = qk_scale or head_dim**-0.5
        self.kv_index: torch.Tensor | None
        if kv_index is None:
            self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
            self.kv_index = None
        else:
            # K/V-pruned layer: separate projections so that each keeps constant weights (delegates such as XNNPACK
            # only take linears with constant weights; slicing one fused qkv weight at run time defeats them)
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * inner, bias=qkv_bias)
            self.register_buffer("kv_index", torch.tensor(kv_index, dtype=torch.long), persistent=False)
        self.proj = nn.Linear(inner, dim)
        self.attn_hook = None  # set by AMG statistics passes: called with (module, attention probabilities)
        self.fused = False  # set by `fused_attention` while training/embedding; exports keep the explicit graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        if self.kv_index is None:
            q, k, v = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        else:
            q = self.q(x).reshape(B, N, H, d).transpose(1, 2)
            xk = x.index_select(1, self.kv_index)  # gather *before* projecting: only kept keys/values cost MACs
            k, v = self.kv(xk).reshape(B, xk.shape[1], 2, H, d).permute(2, 0, 3, 1, 4)
        if self.fused and self.attn_hook is None:  # nothing needs the map: one fused kernel (flash/memory-efficient)
            out = nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(B, N, H * d))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        if self.attn_hook is not None:
            self.attn_hook(self, attn)
        out = (attn @ v).transpose(1, 2).reshape(B, N, H * d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, N, C) token sequences (statistics pooled over batch and tokens) or of
    (B, C) features: ``norm = "batch"`` (module docstring)."""

    def forward(self, x):
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


def make_norm(cfg: ViTConfig, dim: int) -> nn.Module:
    return TokenBatchNorm(dim) if cfg.norm == "batch" else nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, heads: int, kv_index: list[int] | None, mlp_hidden: int | None = None):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.embed_dim)
        self.attn = Attention(cfg.embed_dim, heads, cfg.head_dim, cfg.qkv_bias, kv_index, cfg.qk_scale)
        self.norm2 = make_norm(cfg, cfg.embed_dim)
        self.mlp = Mlp(cfg.embed_dim, mlp_hidden or int(cfg.embed_dim * cfg.mlp_ratio), cfg.gelu)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.stride)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def contrast_scores(img: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """Parameter-free person score per patch: colour distance from the side borders + colour std (B, N)."""
    mean = F.avg_pool2d(img, cfg.patch_size, cfg.stride)  # (B, 3, gh, gw)
    sq = F.avg_pool2d(img * img, cfg.patch_size, cfg.stride)
    std = (sq - mean * mean).clamp_min(0).sum(1).sqrt()
    border = torch.cat([mean[..., :1], mean[..., -1:]], dim=3).mean(dim=(2, 3), keepdim=True)
    dist = ((mean - border) ** 2).sum(1).sqrt()
    return (dist + std).flatten(1)


def topk_onehot(scores: torch.Tensor, k: int, spatial: bool = True) -> torch.Tensor:
    """(B, N) scores -> (B, k, N) one-hot rows (0/1 in the scores' dtype) selecting the k highest scores (ties: lower
    index first).

    Written with comparisons and a sum instead of `topk` + `gather`: the rank of token i is the number of tokens
    that beat it. Static shapes, and only ops that every converter and delegate handles (onnx2tf mis-converts ONNX
    TopK's 1-D K; the Edge TPU has no TopK/Gather). Costs N^2 comparisons and a k x N x C matmul for the gather
    (counted in the executed MACs).

    Row order: ``spatial`` (default) keeps the selected tokens in image (raster) order: row r is the r-th kept token
    counted from the top-left, found as the number of kept tokens before it (a product with a constant triangular
    matrix, N^2 MACs). AMG's K/V pruning keeps static token *positions*; in image order a position means a region
    (the r-th kept patch from the top), where in score order (``spatial=False``, row r = rank r, how checkpoints
    made before 2026-11 were pruned) it means "the r-th most salient patch", a different image location every time.
    Self-attention itself does not depend on the order (position embeddings are added before the selection).
    """
    n = scores.shape[1]
    idx = torch.arange(n, device=scores.device)
    other, this = scores[:, None, :], scores[:, :, None]
    # "other > this" as max(other, this) == other and other != this: MAXIMUM, EQUAL and NOT_EQUAL have integer
    # kernels in LiteRT's quantizer, GREATER has none (it stayed the one float op of a full-integer ViT)
    beats = (torch.maximum(other, this) == other) & ((other != this) | (idx[None, None, :] < idx[None, :, None]))
    rank = beats.sum(-1)  # (B, N), 0-based
    one, zero = (
        torch.ones((), dtype=scores.dtype, device=scores.device),
        torch.zeros((), dtype=scores.dtype, device=scores.device),
    )
    if not spatial:
        return torch.where(rank[:, None, :] == torch.arange(k, device=scores.device)[None, :, None], one, zero)
    kept = rank < k  # (B, N)
    before = torch.triu(torch.ones(n, n, dtype=scores.dtype, device=scores.device), diagonal=1)  # [j, i] = 1 when j < i
    position = torch.where(kept, one, zero) @ before  # kept tokens before token i (a select, not a cast: see above)
    slots = torch.arange(k, device=scores.device, dtype=scores.dtype)[None, :, None]
    return torch.where((position[:, None, :] == slots) & kept[:, None, :], one, zero)


class ViTReID(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, C))
        self.sie_embed = nn.Parameter(torch.zeros(cfg.camera_num, 1, C)) if cfg.camera_num > 0 else None
        self.scorer = nn.Linear(C, 1) if cfg.keep_ratio < 1.0 and cfg.scorer == "learned" else None
        windowed = cfg.windows > 1
        n_global = cfg.window_start if windowed and cfg.window_weights == "separate" else cfg.depth

        def block(i: int) -> Block:  # block i of all_blocks() order, with its pruned heads, K/V slots and MLP width
            return Block(cfg, cfg.heads_per_layer[i], cfg.kv_index[i], cfg.mlp_hidden_per_layer[i])

        self.blocks = nn.ModuleList(block(i) for i in range(n_global))
        self.window_blocks = None
        if windowed and cfg.window_weights == "separate":
            per = cfg.depth - cfg.window_start
            self.window_blocks = nn.ModuleList(
                nn.ModuleList(block(n_global + w * per + j) for j in range(per)) for w in range(cfg.windows)
            )
        self.window_embed = nn.Parameter(torch.zeros(cfg.windows, 1, C)) if windowed else None
        self.norm = make_norm(cfg, C)
        self.bottleneck = nn.BatchNorm1d(C)
        self.bottleneck.bias.requires_grad_(False)  # BNNeck (Luo et al., 2019): no shift before the classifier
        self.classifier = nn.Linear(C, cfg.num_classes, bias=False) if cfg.num_classes > 0 else None
        self.jpm_block = self.jpm_norm = self.jpm_bottlenecks = self.jpm_classifiers = None
        if cfg.jpm:
            self.jpm_block = Block(cfg, cfg.num_heads, None)
            self.jpm_norm = make_norm(cfg, C)
            self.jpm_bottlenecks = nn.ModuleList(nn.BatchNorm1d(C) for _ in range(4))
            for bn in self.jpm_bottlenecks:
                bn.bias.requires_grad_(False)
            if cfg.num_classes > 0:
                self.jpm_classifiers = nn.ModuleList(nn.Linear(C, cfg.num_classes, bias=False) for _ in range(4))
            for k, part in enumerate(cfg.jpm_part_indices()):
                self.register_buffer(f"jpm_part{k}", torch.tensor(part, dtype=torch.long), persistent=False)
        groups = cfg.token_groups()
        for gi, g in enumerate(groups):
            self.register_buffer(f"group{gi}", torch.tensor(g, dtype=torch.long), persistent=False)
        self._init_weights()

    @property
    def feature_dim(self) -> int:
        return self.cfg.embed_dim * (5 if self.cfg.jpm else 1)

    @property
    def uses_camera(self) -> bool:
        """True when the forward pass needs each image's camera (SIE without a baked camera)."""
        return self.sie_embed is not None and self.cfg.sie_camera is None

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for extra in (self.sie_embed, self.window_embed):
            if extra is not None:
                nn.init.trunc_normal_(extra, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for clf in [self.classifier] + list(self.jpm_classifiers or []):
            if clf is not None:
                nn.init.normal_(clf.weight, std=0.001)

    def all_blocks(self) -> list[Block]:
        """Blocks in config order (the order of heads_per_layer and kv_index)."""
        out = list(self.blocks)
        if self.window_blocks is not None:
            for wb in self.window_blocks:
                out.extend(wb)
        return out

    def block_depths(self) -> list[int]:
        """Depth (0-based layer index in the forward pass) of every block in all_blocks() order."""
        cfg = self.cfg
        depths = list(range(len(self.blocks)))
        if self.window_blocks is not None:
            for _ in self.window_blocks:
                depths.extend(range(cfg.window_start, cfg.depth))
        return depths

    def _select(self, x: torch.Tensor, img: torch.Tensor) -> list[torch.Tensor]:
        """Split patch tokens into groups (windows) and keep the top-K of each when elimination is on."""
        cfg = self.cfg
        groups = [getattr(self, f"group{i}") for i in range(cfg.windows)]
        if cfg.keep_ratio >= 1.0:
            return [x] if cfg.windows == 1 else [x.index_select(1, g) for g in groups]
        if self.scorer is not None:
            scores = self.scorer(x).squeeze(-1)
        else:
            scores = contrast_scores(img, cfg)
        out = []
        gate = torch.sigmoid(scores) if self.scorer is not None and self.training else None
        for g, k in zip(groups, cfg.kept_per_group()):
            onehot = topk_onehot(scores.index_select(1, g), k, cfg.token_order == "spatial").to(
                x.dtype
            )  # (B, k, n_group), 0/1
            tokens = onehot @ x.index_select(1, g)
            if gate is not None:
                s = onehot @ gate.index_select(1, g).unsqueeze(-1)
                tokens = tokens * (1.0 + s - s.detach())  # straight-through: value unchanged, scorer gets gradient
            out.append(tokens)
        return out

    def _camera_embedding(self, cam: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """SIE term lambda * E[cam] (B, 1, C), or None for a model without SIE."""
        if self.sie_embed is None:
            return None
        if cam is None:
            if self.cfg.sie_camera is None:
                raise ValueError(
                    "this model has a camera embedding (SIE): pass each image's camera, or bake one "
                    "camera in (sie_camera, `mobilereid export --camera K`)"
                )
            return self.cfg.camera_lambda * self.sie_embed[self.cfg.sie_camera].expand(batch, 1, -1)
        return self.cfg.camera_lambda * self.sie_embed[cam]

    def _embed_tokens(self, img: torch.Tensor, cam: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Class token and the (selected) patch tokens of each group, with position and camera embeddings."""
        x = self.patch_embed(img) + self.pos_embed[:, 1:]
        cls = self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed[:, :1]
        sie = self._camera_embedding(cam, x.shape[0])
        if sie is not None:
            x, cls = x + sie, cls + sie
        return cls, self._select(x, img)

    def forward_parts(
        self, img: torch.Tensor, cam: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """JPM: the global feature and the four local features, all before their BNNecks."""
        cls, groups = self._embed_tokens(img, cam)
        t = torch.cat([cls] + groups, dim=1)
        for blk in self.blocks[:-1]:
            t = blk(t)
        glob = self.norm(self.blocks[-1](t)[:, 0])
        token = t[:, :1]
        local = []
        for k in range(4):
            part = t.index_select(1, getattr(self, f"jpm_part{k}"))
            local.append(self.jpm_norm(self.jpm_block(torch.cat([token, part], dim=1))[:, 0]))
        return glob, local

    def forward_features(self, img: torch.Tensor, cam: torch.Tensor | None = None) -> torch.Tensor:
        """The global feature before the BNNeck (the class token after the final LayerNorm)."""
        cfg = self.cfg
        cls, groups = self._embed_tokens(img, cam)
        t = torch.cat([cls] + groups, dim=1)
        if cfg.windows == 1:
            for blk in self.blocks:
                t = blk(t)
            return self.norm(t[:, 0])
        for blk in self.blocks[: cfg.window_start]:
            t = blk(t)
        cls_g = t[:, :1]
        feats, start = [], 1
        for w, grp in enumerate(groups):
            tw = torch.cat([cls_g + self.window_embed[w], t[:, start : start + grp.shape[1]]], dim=1)
            start += grp.shape[1]
            blocks = self.blocks[cfg.window_start :] if self.window_blocks is None else self.window_blocks[w]
            for blk in blocks:
                tw = blk(tw)
            feats.append(self.norm(tw[:, 0]))
        return torch.stack(feats, 0).mean(0)

    def forward(self, img: torch.Tensor, cam: torch.Tensor | None = None):
        if self.cfg.jpm:
            feat, local = self.forward_parts(img, cam)
        else:
            feat, local = self.forward_features(img, cam), []
        bn = self.bottleneck(feat)
        local_bn = [b(f) for b, f in zip(self.jpm_bottlenecks or [], local)]
        if self.training:
            logits = [self.classifier(bn)] if self.classifier is not None else []
            if self.jpm_classifiers is not None:
                logits += [c(f) for c, f in zip(self.jpm_classifiers, local_bn)]
            return logits, [feat] + local
        glob, parts = (bn, local_bn) if self.cfg.neck_feat == "after" else (feat, local)
        if not parts:
            return glob
        return torch.cat([glob] + [p / 4 for p in parts], dim=1)


@contextlib.contextmanager
def fused_attention(model: nn.Module):
    """Run every attention layer of ``model`` through `scaled_dot_product_attention` inside the block (training and
    embedding loops); layers with an AMG hook keep the explicit softmax, whose map the hook needs. Outside the block
    the explicit path is back, so exported graphs and their op lists do not change. Any model: a no-op without ViT
    attention layers."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.fused for m in layers]
    for m in layers:
        m.fused = True
    try:
        yield model
    finally:
        for m, b in zip(layers, before):
            m.fused = b


@contextlib.contextmanager
def attention_hooks(model: ViTReID, hook_for):
    """Install ``hook_for(i)`` on every attention layer (all_blocks order) with the model in eval mode; the hooks
    are removed and the training mode restored afterwards (used by the AMG statistics passes)."""
    blocks = model.all_blocks()
    was_training = model.training
    model.eval()
    for i, b in enumerate(blocks):
        b.attn.attn_hook = hook_for(i)
    try:
        yield blocks
    finally:
        for b in blocks:
            b.attn.attn_hook = None
        model.train(was_training)


def separate_window_weights(model: ViTReID) -> ViTReID:
    """Copy a shared-weight (or plain) model into one whose windows have their own blocks, as initialisation."""
    cfg = copy.deepcopy(model.cfg)
    if cfg.windows == 1:
        raise ValueError("windows must be > 1 to separate window weights")
    cfg.window_weights = "separate"
    cfg.heads_per_layer = (
        cfg.heads_per_layer[: cfg.window_start] + cfg.heads_per_layer[cfg.window_start :] * cfg.windows
    )
    cfg.kv_index = cfg.kv_index[: cfg.window_start] + cfg.kv_index[cfg.window_start :] * cfg.windows
    hidden = cfg.mlp_hidden_per_layer
    cfg.mlp_hidden_per_layer = hidden[: cfg.window_start] + hidden[cfg.window_start :] * cfg.windows
    new = ViTReID(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for i in range(cfg.window_start):
        state.update({f"blocks.{i}.{k}": v for k, v in model.blocks[i].state_dict().items()})
    for w in range(cfg.windows):
        for j, i in enumerate(range(cfg.window_start, cfg.depth)):
            state.update({f"window_blocks.{w}.{j}.{k}": v for k, v in model.blocks[i].state_dict().items()})
    new.load_state_dict(state)
    return new
