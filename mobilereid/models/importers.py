"""`mobilereid import`: foreign state dicts into mobilereid checkpoints, no training: ViTs (TransReID, timm, DeiT)
here, torchreid's OSNets and fast-reid's BoT/SBS ResNets in `cnn_importers.py`.

One function per source format maps the keys onto `ViTReID`; the architecture is read from the tensor shapes
(width, depth, patch size, MLP ratio, qkv bias, stride from the position-embedding length) and the head count from
the model name (shapes cannot tell 12 heads of 64 from 8 heads of 96). What each source computes at test time is
recorded in the model config, so every later command (compress, export, evaluate) and every artifact sidecar use it:

* **TransReID** (He et al., ICCV 2021; its public code read as documentation): inputs normalised with mean = std =
  0.5 (every config of its repository), test feature before the BNNeck (``NECK_FEAT: before`` in every config; the
  evaluator L2-normalises it), SIE camera embedding with coefficient ``SIE_COE`` = 3.0, overlapping patches
  (stride 12 or 16), and with JPM the trained last block / LayerNorm under ``b1.0`` / ``b1.1`` (the ``base.blocks``
  last block and ``base.norm`` are copies TransReID's own inference never runs: they are reported as unused), the
  local branch ``b2`` and the four local BNNecks. Its ``vit_small`` (768 wide, 8 blocks, 8 heads, MLP 3x, no qkv
  bias) scales attention by 768^-0.5, which is kept. SIE rows are taken as cameras; TransReID's camera x view SIE
  (``SIE_VIEW``, vehicle datasets) is not reproduced.
* **timm** ViT ImageNet weights: timm's ViT configs normalise with mean = std = 0.5 (DeiT: ImageNet statistics);
  there is no trained BNNeck, so the test feature is the class token before it.
* **DeiT** (distilled): the distillation token and its position row are dropped, as TransReID's loader does.

Position embeddings from another grid (e.g. 14x14 at 224) are resized bilinearly, as TransReID's
`resize_pos_embed` does. Only plain dicts of tensors are accepted, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError
from .checkpoint import file_sha256, load_state_dict_checked, safe_torch_load, save_checkpoint
from .pretrained import resize_pos_embed
from .vit import ViTConfig, ViTReID

FORMATS = ("transreid", "timm", "deit", "torchreid", "fastreid")
CNN_FORMATS = ("torchreid", "fastreid")
HALF = (0.5, 0.5, 0.5)

# name -> (heads, qk_scale); width/depth/mlp come from the shapes and are checked against `expect`
ARCHS: dict[str, dict] = {
    "vit_base": dict(num_heads=12, expect=dict(embed_dim=768, depth=12)),
    "deit_base": dict(num_heads=12, expect=dict(embed_dim=768, depth=12)),
    "vit_small_transreid": dict(num_heads=8, qk_scale=768**-0.5, expect=dict(embed_dim=768, depth=8)),
    "vit_small": dict(num_heads=6, expect=dict(embed_dim=384, depth=12)),
    "deit_small": dict(num_heads=6, expect=dict(embed_dim=384, depth=12)),
    "vit_tiny": dict(num_heads=3, expect=dict(embed_dim=192, depth=12)),
    "deit_tiny": dict(num_heads=3, expect=dict(embed_dim=192, depth=12)),
}


@dataclass
class ImportOptions:
    format: str | None = None  # transreid | timm | deit; None = detect from the keys
    model: str | None = (
        None  # an ARCHS name; None = from the width (768 -> 12 heads, 8 blocks of 768 -> TransReID vit_small)
    )
    heads: int | None = None  # attention heads of a custom width (instead of --model)
    img_size: tuple[int, int] = (256, 128)
    stride: int | None = None  # None = from the position embedding (TransReID) or 16
    cameras: int | None = None  # SIE rows expected (checked against the weights)
    jpm: bool | None = None  # None = from the keys
    neck_feat: str = "before"
    sie_coefficient: float = 3.0
    pixel_mean: tuple[float, float, float] | None = None  # None = the format's convention
    pixel_std: tuple[float, float, float] | None = None
    gelu: str = "exact"
    maxpool: str = "auto"  # fast-reid's stem pool: auto (from the key names where they date the file), ceil, legacy
    last_stride: int = 1  # fast-reid's layer4 stride (not in the weights)
    pooling: str | None = None  # fast-reid: avg | gem; None = gem when the weights hold a learned exponent


@dataclass
class ImportResult:
    model: torch.nn.Module
    format: str
    unused: list[str] = field(default_factory=list)  # source tensors the source's own inference never reads
    notes: list[str] = field(default_factory=list)


def plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict (optionally nested under 'model' / 'state_dict'), refusing anything but tensors."""
    sd = safe_torch_load(path, "state dict")
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), got {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a plain state dict: entry {bad[0]!r} is not a tensor")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}


def detect_format(sd: dict, path: Path) -> str:
    from .cnn_importers import looks_like_fastreid, looks_like_torchreid

    keys = set(sd)
    if looks_like_torchreid(keys):
        return "torchreid"
    if looks_like_fastreid(keys):
        return "fastreid"
    if any(k.startswith("base.") for k in keys):
        return "transreid"
    if "dist_token" in keys:
        return "deit"
    if any(k.startswith("blocks.") for k in keys) and any(k.startswith("head.") for k in keys):
        return "timm"
    if "format" in keys or "state_dict" in keys:
        raise CheckpointError(f"{path}: this is not a foreign state dict; mobilereid checkpoints need no import")
    raise CheckpointError(
        f"{path}: cannot tell the format from its keys (no 'base.' prefix, no 'blocks.' + 'head.'): "
        f"pass --format {'|'.join(FORMATS)}"
    )


def need_tensor(sd: dict, key: str, path: Path, what: str = "a ViT state dict of the given format") -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: missing tensor {key!r}: not {what}")
    return sd[key]


def infer_architecture(sd: dict, path: Path, opts: ImportOptions) -> dict:
    """ViTConfig fields from the tensor shapes of a timm-layout dict (no prefix) and the options."""
    w = need_tensor(sd, "patch_embed.proj.weight", path)
    if w.ndim != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3]:
        raise CheckpointError(f"{path}: patch_embed.proj.weight has shape {tuple(w.shape)}, expected (C, 3, P, P)")
    C, P = int(w.shape[0]), int(w.shape[2])
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth < 1:
        raise CheckpointError(f"{path}: no transformer blocks (blocks.N.*) found")
    fc1 = need_tensor(sd, "blocks.0.mlp.fc1.weight", path)
    common = dict(
        embed_dim=C, depth=depth, patch_size=P, mlp_ratio=fc1.shape[0] / C, qkv_bias="blocks.0.attn.qkv.bias" in sd
    )
    if opts.heads is not None and opts.model is None:
        if opts.heads < 1 or C % opts.heads:
            raise CheckpointError(f"--heads {opts.heads}: must divide the width {C}")
        return dict(common, num_heads=opts.heads, qk_scale=None, arch=f"vit_{C}x{depth}")
    name = opts.model or (
        "vit_small_transreid" if (C, depth) == (768, 8) else {768: "vit_base", 384: "vit_small", 192: "vit_tiny"}.get(C)
    )
    if name is None:
        raise CheckpointError(f"{path}: width {C} matches no known ViT: pass --model ({', '.join(ARCHS)})")
    if name not in ARCHS:
        raise CheckpointError(f"--model {name!r}: choose one of {', '.join(ARCHS)}")
    arch = ARCHS[name]
    if arch["expect"] != dict(embed_dim=C, depth=depth):
        raise CheckpointError(
            f"{path}: weights are {C} wide with {depth} blocks, --model {name} expects "
            f"{arch['expect']['embed_dim']} wide with {arch['expect']['depth']} blocks"
        )
    return dict(common, num_heads=arch["num_heads"], qk_scale=arch.get("qk_scale"), arch=name)


def infer_stride(n_patches: int, img_size: tuple[int, int], patch: int, path: Path) -> int | None:
    """The stride whose patch grid on img_size has n_patches tokens (None when the embedding is on another grid)."""
    h, w = img_size
    hits = [s for s in range(patch, 0, -1) if ((h - patch) // s + 1) * ((w - patch) // s + 1) == n_patches]
    if len(hits) > 1:
        raise CheckpointError(f"{path}: the position embedding fits strides {hits} at {h}x{w}: pass --stride")
    return hits[0] if hits else None


def _transreid_to_timm(sd: dict, depth_hint: int, jpm: bool) -> tuple[dict, list[str]]:
    """Map TransReID keys onto ViTReID keys; returns (mapped dict, unused source keys)."""
    out, unused = {}, []
    last = depth_hint - 1
    for k, v in sd.items():
        if k.startswith("base."):
            b = k[len("base.") :]
            if b.startswith("fc."):
                unused.append(k)  # the ImageNet head of the backbone, never used for ReID
            elif jpm and (b.startswith(f"blocks.{last}.") or b.startswith("norm.")):
                unused.append(k)  # JPM runs blocks[:-1] of the base; its last block/norm are b1's copies
            else:
                out[b] = v
        elif k.startswith("b1.0."):
            out[f"blocks.{last}." + k[len("b1.0.") :]] = v
        elif k.startswith("b1.1."):
            out["norm." + k[len("b1.1.") :]] = v
        elif k.startswith("b2.0."):
            out["jpm_block." + k[len("b2.0.") :]] = v
        elif k.startswith("b2.1."):
            out["jpm_norm." + k[len("b2.1.") :]] = v
        elif m := re.match(r"bottleneck_([1-4])\.(.*)", k):
            out[f"jpm_bottlenecks.{int(m.group(1)) - 1}.{m.group(2)}"] = v
        elif m := re.match(r"classifier_([1-4])\.(.*)", k):
            out[f"jpm_classifiers.{int(m.group(1)) - 1}.{m.group(2)}"] = v
        elif k.startswith("bottleneck.") or k == "classifier.weight":
            out[k] = v
        else:
            unused.append(k)
    return out, unused


def import_state_dict(sd: dict, path: Path, opts: ImportOptions) -> ImportResult:
    fmt = opts.format or detect_format(sd, path)
    if fmt not in FORMATS:
        raise CheckpointError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt in CNN_FORMATS:
        from .cnn_importers import import_fastreid, import_torchreid

        model, unused, notes = (import_torchreid if fmt == "torchreid" else import_fastreid)(sd, path, opts)
        model.eval()
        return ImportResult(model=model, format=fmt, unused=unused, notes=notes)
    notes: list[str] = []
    if fmt == "transreid":
        if not any(k.startswith("base.") for k in sd):
            raise CheckpointError(f"{path}: --format transreid needs TransReID keys (base.*), none found")
        has_jpm = any(k.startswith("b1.") for k in sd) and any(k.startswith("b2.") for k in sd)
        jpm = has_jpm if opts.jpm is None else opts.jpm
        if jpm and not has_jpm:
            raise CheckpointError(f"{path}: --jpm given but the weights have no JPM branches (b1.*, b2.*)")
        if has_jpm and not jpm:
            notes.append("JPM branch present but --no-jpm: only the global branch (b1) is used")
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"base\.blocks\.(\d+)\.", k)))
        mapped, unused = _transreid_to_timm(sd, depth, has_jpm)
        if has_jpm and not jpm:
            for k in [k for k in mapped if k.startswith("jpm_")]:
                unused.append(k)
                del mapped[k]
        mean = std = HALF
    else:
        jpm = False
        mapped, unused = {}, []
        for k, v in sd.items():
            if k.startswith(("head.", "head_dist.", "fc.")) or k == "dist_token":
                unused.append(k)
            else:
                mapped[k] = v
        if fmt == "deit" and "dist_token" in sd:
            mapped["pos_embed"] = torch.cat([mapped["pos_embed"][:, :1], mapped["pos_embed"][:, 2:]], dim=1)
            notes.append("distillation token and its position row dropped")
        mean, std = (HALF, HALF) if fmt == "timm" else (IMAGENET_MEAN, IMAGENET_STD)
    arch = infer_architecture(mapped, path, opts)
    pos = need_tensor(mapped, "pos_embed", path)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != arch["embed_dim"]:
        raise CheckpointError(
            f"{path}: pos_embed has shape {tuple(pos.shape)}, expected (1, 1 + N, {arch['embed_dim']})"
        )
    stride = (
        opts.stride or infer_stride(pos.shape[1] - 1, opts.img_size, arch["patch_size"], path) or arch["patch_size"]
    )
    cameras = int(mapped["sie_embed"].shape[0]) if "sie_embed" in mapped else 0
    if opts.cameras is not None and opts.cameras != cameras:
        raise CheckpointError(f"{path}: --cameras {opts.cameras} but the weights hold {cameras} SIE camera rows")
    classes = int(mapped["classifier.weight"].shape[0]) if "classifier.weight" in mapped else 0
    try:
        cfg = ViTConfig(
            img_size=tuple(opts.img_size),
            patch_size=arch["patch_size"],
            stride=stride,
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=arch["num_heads"],
            mlp_ratio=arch["mlp_ratio"],
            qkv_bias=arch["qkv_bias"],
            qk_scale=arch["qk_scale"],
            gelu=opts.gelu,
            num_classes=classes,
            camera_num=cameras,
            camera_lambda=opts.sie_coefficient,
            neck_feat=opts.neck_feat,
            jpm=jpm,
            pixel_mean=opts.pixel_mean or mean,
            pixel_std=opts.pixel_std or std,
        )
        model = ViTReID(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        mapped["pos_embed"] = resize_pos_embed(pos, cfg.grid, mode="bilinear")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if tuple(pos.shape[1:2]) != (cfg.num_patches + 1,):
        notes.append(
            f"position embedding resized bilinearly from {pos.shape[1] - 1} patches "
            f"to the {cfg.grid[0]}x{cfg.grid[1]} grid"
        )
    own = model.state_dict()
    if "bottleneck.weight" not in mapped:
        if cfg.neck_feat == "after":
            raise CheckpointError(f"{path}: no trained BNNeck (bottleneck.*) in the weights: use --neck-feat before")
        for k in [k for k in own if k.startswith("bottleneck.")]:
            mapped[k] = own[k]  # identity-initialised; unused by the 'before' test feature
    load_state_dict_checked(model, mapped, path)
    model.preset = arch["arch"]
    model.eval()
    return ImportResult(model=model, format=fmt, unused=sorted(unused), notes=notes)


def test_feature(result: ImportResult) -> str:
    cfg = result.model.cfg
    if result.format == "torchreid":
        return f"fc output (Linear + BatchNorm1d + ReLU, {cfg.feature_dim}-d, not normalised)"
    if result.format == "fastreid":
        return f"{cfg.pooling} pooled feature after the BNNeck ({cfg.feature_dim}-d)"
    return ("concat(global, local_1..4 / 4) " if cfg.jpm else "global class token ") + f"{cfg.neck_feat} BNNeck"


def import_weights(path: str | Path, out: str | Path, opts: ImportOptions) -> ImportResult:
    """Convert a foreign state dict file into a mobilereid checkpoint at `out` (written atomically)."""
    path, out = Path(path), Path(out)
    result = import_state_dict(plain_state_dict(path), path, opts)
    extra = {
        "imported": {
            "source": str(path),
            "source_sha256": file_sha256(path),
            "format": result.format,
            "architecture": result.model.preset,
            "test_feature": test_feature(result),
            "unused_source_tensors": result.unused,
            "notes": result.notes,
        }
    }
    save_checkpoint(out, result.model, extra=extra)
    return result
