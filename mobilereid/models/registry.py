"""Presets and the public builder `build_model(name, **options)`.

ViT presets follow the timm/DeiT sizes (ViT-B/16, DeiT-S, DeiT-Ti); ``vit_test`` and ``sclnet_test`` are tiny
presets for fast export tests (two blocks / quarter width, 64x32 input). ``sclnet_small`` is the half-width
variant (128x64) for phones and Cortex-M7-class boards.

``sclnet_micro`` (quarter width, one SC-unit per stage, 128x64: 0.10 M parameters, 11.4 MMAC) is the Cortex-M4
model, chosen by measurement (docs/results/2026-11-30-mcu-sclnet-micro.md): its INT8 TFLite Micro artifact fits a
Cortex-M4's flash and RAM, where two SC-units per stage did not and trained worse; 96x48 is not an option (SCL-net
needs multiples of 32), 64x32 leaves 8x4 cells at the last stage.
"""

from __future__ import annotations

from torch import nn

from .osnet import WIDTHS, OSNet, OSNetConfig
from .resnet_reid import ResNetReID, ResNetReIDConfig
from .sclnet import SCLNet, SCLNetConfig
from .vit import ViTConfig, ViTReID

R50_NON_LOCAL = (0, 2, 3, 0)  # fast-reid's non_layers for ResNet-50

PRESETS: dict[str, tuple[str, dict]] = {
    "vit_base": ("vit", dict(embed_dim=768, depth=12, num_heads=12)),
    "vit_small": ("vit", dict(embed_dim=384, depth=12, num_heads=6)),
    "vit_tiny": ("vit", dict(embed_dim=192, depth=12, num_heads=3)),
    "vit_test": ("vit", dict(embed_dim=64, depth=2, num_heads=2, img_size=(64, 32), patch_size=8, stride=8)),
    "sclnet": ("sclnet", dict()),
    "sclnet_small": ("sclnet", dict(width=0.5, img_size=(128, 64))),
    "sclnet_micro": ("sclnet", dict(width=0.25, img_size=(128, 64), units=(1, 1, 1))),
    "sclnet_test": ("sclnet", dict(width=0.25, img_size=(64, 32), units=(1, 1, 1))),
    **{f"osnet_{w}": ("osnet", dict(channels=c)) for w, c in WIDTHS.items()},
    "osnet_ibn_x1_0": ("osnet", dict(norm="ibn")),
    **{f"osnet_ain_{w}": ("osnet", dict(channels=c, norm="ain")) for w, c in WIDTHS.items()},
    "osnet_test": ("osnet", dict(channels=(16, 32, 48, 64), layers=(1, 1, 1), feature_dim=64, img_size=(64, 32))),
    "osnet_ibn_test": (
        "osnet",
        dict(channels=(16, 32, 48, 64), layers=(1, 1, 1), feature_dim=64, img_size=(64, 32), norm="ibn"),
    ),
    "bot_r50": ("resnet", dict()),
    "bot_r50_ibn": ("resnet", dict(ibn=True)),
    "sbs_r50": ("resnet", dict(non_local=R50_NON_LOCAL, pooling="gem")),
    "sbs_r50_ibn": ("resnet", dict(ibn=True, non_local=R50_NON_LOCAL, pooling="gem")),
    "resnet_test": (
        "resnet",
        dict(layers=(1, 1, 1, 1), base_width=8, non_local=(0, 1, 1, 0), pooling="gem", img_size=(64, 32)),
    ),
}

_FAMILIES = {
    "vit": (ViTConfig, ViTReID),
    "sclnet": (SCLNetConfig, SCLNet),
    "osnet": (OSNetConfig, OSNet),
    "resnet": (ResNetReIDConfig, ResNetReID),
}
FAMILIES = tuple(_FAMILIES)


def model_family(model: nn.Module) -> str:
    if isinstance(model, ViTReID):
        return "vit"
    return getattr(
        model, "family", "sclnet"
    )  # OSNet / ResNetReID name theirs  # "external": a torch.export program (models/external.py)


def preset_config(name: str, **options) -> tuple[str, dict]:
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}")
    family, base = PRESETS[name]
    cfg = dict(base)
    cfg.update({k: v for k, v in options.items() if v is not None})
    return family, cfg


def build_from_config(family: str, config: dict) -> nn.Module:
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}")
    cfg_cls, model_cls = _FAMILIES[family]
    try:
        cfg = cfg_cls(**config)
    except TypeError as exc:
        raise ValueError(f"bad {family} config: {exc}") from None
    return model_cls(cfg)


def build_model(name: str, **options) -> nn.Module:
    """Build a preset, e.g. ``build_model("vit_small", keep_ratio=0.7, windows=2, num_classes=751)``."""
    family, cfg = preset_config(name, **options)
    model = build_from_config(family, cfg)
    model.preset = name
    return model
