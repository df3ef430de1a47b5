"""Checks of a model config read from a file, before anything is built from it.

A checkpoint's config is data from outside: the config classes check that options fit together, but not that a
value has the right type or a size a machine can hold. Built as it stands, ``embed_dim = 10**6`` allocates 9.4 GB
before failing, ``img_size = [0, 0]`` builds a model whose first forward pass dies in a convolution, and
``feature_dim = "many"`` ends in a TypeError deep in a constructor. So every stored value is checked here for
type and range, then the parameters of its weight matrices are counted from the config, and only a model of at
most `MAX_PARAMS` is built. Each refusal names the key, its value and what was expected. The bounds are far above
every preset (the largest, vit_base, has 86 M parameters at 256x128). A config field without a bound here (one
added later) is left to its config class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

MAX_SIDE = 2048  # pixels per side of the model input
MAX_PATCHES = 65536  # ViT tokens per image (attention is quadratic in them)
MAX_PARAMS = 1_000_000_000


class ConfigValueError(ValueError):
    """Why a stored config cannot describe a model; the text reads on after "stored config "."""


def bad_value(key: str, value, expected: str) -> ConfigValueError:
    text = repr(value)
    return ConfigValueError(f"{key} = {text if len(text) <= 80 else text[:77] + '...'}: expected {expected}")


Check = Callable[[object], "str | None"]  # None when the value is fine, else what was expected


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def whole(lo: int, hi: int) -> Check:
    return lambda v: None if _is_int(v) and lo <= v <= hi else f"a whole number from {lo} to {hi}"


def number(lo: float, hi: float, open_low: bool = True) -> Check:
    def check(v):
        ok = _is_num(v) and (lo < v if open_low else lo <= v) and v <= hi
        return None if ok else f"a number in {'(' if open_low else '['}{lo:g}, {hi:g}]"

    return check


def flag(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def choice(*names: str) -> Check:
    return lambda v: None if isinstance(v, str) and v in names else f"one of {', '.join(names)}"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else (None if check(v) is None else f"null or {check(v)}")


def whole_list(lo: int, hi: int, length: int | None = None, max_len: int = 4096) -> Check:
    def check(v):
        ok = isinstance(v, (list, tuple)) and (len(v) == length if length else len(v) <= max_len)
        ok = ok and all(_is_int(x) and lo <= x <= hi for x in v)
        return None if ok else f"{length or 'a list of'} whole numbers from {lo} to {hi}"

    return check


def kv_lists(v) -> str | None:
    """Per block: null, or the token positions its keys and values keep."""
    one = whole_list(0, MAX_PATCHES, max_len=MAX_PATCHES + 1)
    ok = isinstance(v, (list, tuple)) and len(v) <= 4096 and all(x is None or one(x) is None for x in v)
    return None if ok else f"a list with, per block, null or a list of token positions from 0 to {MAX_PATCHES}"


def triple(positive: bool) -> Check:
    def check(v):
        ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_num(x) and (x > 0 or not positive) for x in v)
        return None if ok else f"3 {'positive ' if positive else ''}numbers (R, G, B)"

    return check


def image_size(multiple: int = 1) -> Check:
    def check(v):
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and 1 <= x <= MAX_SIDE for x in v)
        ok = ok and all(x % multiple == 0 for x in v)
        unit = f" multiples of {multiple}" if multiple > 1 else " whole numbers"
        return None if ok else f"[height, width], two{unit} from {multiple} to {MAX_SIDE}"

    return check


SCLNET = {
    "img_size": image_size(32),
    "width": number(0, 8),
    "channels": whole_list(1, 4096, 4),
    "units": whole_list(1, 16, 3),
    "feature_dim": whole(1, 8192),
    "shallow_head": flag,
    "num_classes": whole(0, 1_000_000),
}
VIT = {
    "img_size": image_size(),
    "patch_size": whole(1, 512),
    "stride": whole(1, 512),
    "embed_dim": whole(1, 8192),
    "depth": whole(1, 64),
    "num_heads": whole(1, 1024),
    "mlp_ratio": number(0, 16),
    "qkv_bias": flag,
    "gelu": choice("exact", "tanh"),
    "norm": choice("layer", "batch"),
    "num_classes": whole(0, 1_000_000),
    "camera_num": whole(0, 10_000),
    "camera_lambda": number(-1e3, 1e3, open_low=False),
    "keep_ratio": number(0, 1),
    "scorer": choice("learned", "contrast"),
    "token_order": choice("spatial", "rank"),
    "windows": whole(1, 1024),
    "window_start": whole(0, 64),
    "window_weights": choice("shared", "separate"),
    "heads_per_layer": optional(whole_list(1, 1024)),
    "kv_index": optional(kv_lists),
    "mlp_hidden_per_layer": optional(whole_list(1, 131072)),
    "head_dim": optional(whole(1, 8192)),
    "qk_scale": optional(number(0, 1e3)),
    "neck_feat": choice("before", "after"),
    "sie_camera": optional(whole(0, 9_999)),
    "jpm": flag,
    "jpm_shift": whole(1, MAX_PATCHES),
    "jpm_groups": whole(1, MAX_PATCHES),
    "jpm_divide": whole(1, MAX_PATCHES),
    "jpm_rearrange": flag,
    "pixel_mean": triple(False),
    "pixel_std": triple(True),
}
OSNET = {
    "img_size": image_size(),
    "channels": whole_list(4, 8192, 4),
    "layers": whole_list(1, 64, 3),
    "feature_dim": whole(1, 8192),
    "norm": choice("bn", "ibn", "ain"),
    "gate_reduction": whole(1, 1024),
    "num_classes": whole(0, 1_000_000),
    "pixel_mean": triple(False),
    "pixel_std": triple(True),
}
RESNET = {
    "img_size": image_size(),
    "layers": whole_list(1, 64, 4),
    "base_width": whole(2, 1024),
    "last_stride": whole(1, 2),
    "ibn": flag,
    "non_local": whole_list(0, 64, 4),
    "non_local_inter": whole(1, 8192),
    "pooling": choice("avg", "gem"),
    "maxpool": choice("ceil", "legacy"),
    "num_classes": whole(0, 1_000_000),
    "pixel_mean": triple(False),
    "pixel_std": triple(True),
}
FIELDS = {"sclnet": SCLNET, "vit": VIT, "osnet": OSNET, "resnet": RESNET}
SIZE_KEYS = {
    "sclnet": ("width", "channels", "units", "feature_dim", "num_classes"),
    "vit": ("embed_dim", "depth", "mlp_ratio", "num_classes", "mlp_hidden_per_layer"),
    "osnet": ("channels", "layers", "feature_dim", "num_classes"),
    "resnet": ("layers", "base_width", "num_classes"),
}


def check_stored_config(family: str, config) -> None:
    """Raise ConfigValueError for the first stored value that cannot describe a model of ``family`` (any
    family of the registry); returns quietly for every config this project writes."""
    from dataclasses import fields as dataclass_fields

    from .registry import _FAMILIES

    if not isinstance(config, dict):
        raise ConfigValueError(f"is a {type(config).__name__}, not a table of model options")
    known = {f.name for f in dataclass_fields(_FAMILIES[family][0])}
    for key, value in config.items():
        if key not in known:
            raise bad_value(key, value, f"a {family} option this mobilereid knows (written by a newer version?)")
        expected = FIELDS[family][key](value) if key in FIELDS[family] else None
        if expected:
            raise bad_value(key, value, expected)
    if family == "vit":
        _check_vit_geometry(config)


def _check_vit_geometry(config: dict) -> None:
    h, w = config.get("img_size", (256, 128))
    patch, stride = config.get("patch_size", 16), config.get("stride", 16)
    if patch > min(h, w):
        raise bad_value("patch_size", patch, f"at most the input's smaller side ({min(h, w)})")
    patches = ((h - patch) // stride + 1) * ((w - patch) // stride + 1)
    if patches > MAX_PATCHES:
        raise bad_value("stride", stride, f"a patch grid of at most {MAX_PATCHES} tokens ({h}x{w} gives {patches})")
    dim, heads = config.get("embed_dim", 768), config.get("num_heads", 12)
    if config.get("head_dim") is None and heads > dim:
        raise bad_value("num_heads", heads, f"at most embed_dim ({dim})")


def check_parameter_count(family: str, config: dict) -> None:
    """Refuse a config whose model would have more than MAX_PARAMS parameters, counted from its weight matrices
    before anything is allocated (a lower bound: norms and biases are left out, they are a fraction of a percent)."""
    count = {"vit": _vit_weights, "sclnet": _sclnet_weights}.get(family)
    n = count(config) if count else _meta_weights(family, config)
    if n > MAX_PARAMS:
        keys = [k for k in SIZE_KEYS[family] if config.get(k) is not None]
        key, value = (keys[0], config[keys[0]]) if len(keys) == 1 else (", ".join(keys), [config[k] for k in keys])
        raise bad_value(
            key,
            value,
            f"a model of at most {MAX_PARAMS / 1e9:g} billion parameters (this one has {n / 1e9:.1f} billion)",
        )


def _vit_weights(config: dict) -> int:
    """Patch embedding, position embedding, per block q/k/v/proj and the MLP, JPM's extra block, classifiers
    (the layout of `ViTReID`; the config classes check how the per-layer lists fit the blocks)."""
    from .vit import ViTConfig

    d = {f: getattr(ViTConfig, f) for f in VIT if hasattr(ViTConfig, f)}
    d.update(config)
    h, w = d["img_size"]
    c, p, s = d["embed_dim"], d["patch_size"], d["stride"]
    patches = ((h - p) // s + 1) * ((w - p) // s + 1)
    blocks = d["depth"]
    if d["windows"] > 1 and d["window_weights"] == "separate":
        blocks = d["window_start"] + d["windows"] * max(0, d["depth"] - d["window_start"])
    head_dim = d["head_dim"] or c // d["num_heads"]
    heads = list(d["heads_per_layer"] or [])[:blocks] or [d["num_heads"]] * blocks
    hidden = list(d["mlp_hidden_per_layer"] or [])[:blocks] or [int(c * d["mlp_ratio"])] * blocks
    per_block = [4 * c * n * head_dim + 2 * c * m for n, m in zip(heads, hidden)]
    jpm = 4 * c * d["num_heads"] * head_dim + 2 * c * int(c * d["mlp_ratio"]) if d["jpm"] else 0
    return 3 * c * p * p + (patches + 1) * c + sum(per_block) + jpm + c * d["num_classes"] * (5 if d["jpm"] else 1)


def _meta_weights(family: str, config: dict) -> int:
    """Parameters of a CNN family counted by building it on torch's meta device (shapes only, no memory). A
    conv's weights grow with the square of the channel counts that the range checks above bound, so the build
    itself stays small for every config that passes them."""
    import torch

    from .registry import build_from_config

    with torch.device("meta"):
        model = build_from_config(family, config)
    return sum(p.numel() for p in model.parameters())


def _sclnet_weights(config: dict) -> int:
    """Stem, SC-units (reduce, two chains of light convs, fuse, projection), transitions and heads (the layout of
    `SCLNet`)."""
    from .sclnet import SCLNetConfig

    cfg = SCLNetConfig(**{k: v for k, v in config.items() if k != "img_size"})
    c = [cfg.ch(i) for i in range(4)]
    dim = max(16, int(round(cfg.feature_dim * min(cfg.width, 1.0))))

    def unit(cin: int, cout: int) -> int:
        mid = max(8, cout // 4)
        return cin * mid + 6 * (mid * mid + 9 * mid) + 3 * mid * cout + (cin * cout if cin != cout else 0)

    n = 27 * (c[0] // 2) + 9 * (c[0] // 2) * c[0]
    for i, units in enumerate(cfg.units):
        n += unit(c[i], c[i + 1]) + (units - 1) * unit(c[i + 1], c[i + 1])
    n += c[1] * c[1] + c[2] * c[2] + c[3] * dim + dim * cfg.num_classes
    if cfg.shallow_head:
        n += c[2] * (dim // 2) + (dim // 2) * cfg.num_classes
    return n
