"""`mobilereid import` for the CNNs users deploy: torchreid's OSNet family and fast-reid's BoT/SBS ResNets.

Both models here use their source's module names (models/osnet.py, models/resnet_reid.py), so an import renames
nothing but fast-reid's old ``heads.bnneck`` and reads the variant from the tensor shapes. It is strict, unlike
torchreid's own ``load_pretrained_weights``, which skips tensors whose name or shape does not match and carries on:
a missing, extra or wrongly shaped tensor is an error naming it. The one tolerance is BatchNorm's
``num_batches_tracked`` counter, which files written before torch 0.4.1 lack and no forward pass reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError
from .checkpoint import load_state_dict_checked
from .importers import need_tensor
from .osnet import AIN_PATTERN, WIDTHS, OSNet, OSNetConfig
from .resnet_reid import ResNetReID, ResNetReIDConfig

FASTREID_SCALE = 255.0  # fast-reid normalises 0-255 pixels inside the model; ours take 0-1 images


def looks_like_torchreid(keys: set[str]) -> bool:
    return "conv1.conv.weight" in keys and any(k.startswith("conv2.0.") for k in keys) and "conv5.conv.weight" in keys


def looks_like_fastreid(keys: set[str]) -> bool:
    return any(k.startswith("backbone.") for k in keys) and (
        any(k.startswith("heads.") for k in keys) or "pixel_mean" in keys
    )


def _block_count(sd: dict, stage: str) -> int:
    """Blocks of a torchreid stage: indices N with ``stage.N.conv1.conv.weight`` (the transition has none)."""
    found = {int(m.group(1)) for k in sd if (m := re.match(rf"{stage}\.(\d+)\.conv1\.conv\.weight$", k))}
    if found != set(range(len(found))):
        raise CheckpointError(f"stage {stage}: block indices {sorted(found)} are not 0..N-1")
    return len(found)


def _fill_batch_counters(model: torch.nn.Module, sd: dict, notes: list[str]) -> dict:
    own = model.state_dict()
    filled = [k for k in own if k.endswith("num_batches_tracked") and k not in sd]
    if filled:
        notes.append(f"{len(filled)} BatchNorm num_batches_tracked counters absent (older torch): set to 0")
        sd = {**sd, **{k: torch.zeros((), dtype=torch.long) for k in filled}}
    return sd


def osnet_config_from_weights(
    sd: dict, path: Path, img_size: tuple[int, int], pixel_mean=None, pixel_std=None
) -> tuple[OSNetConfig, str]:
    """The OSNet variant the tensor shapes describe, and its preset-style name (osnet_ain_x0_25, ...)."""
    what = "a torchreid OSNet state dict"
    ain = any(k.startswith(("pool2.", "conv2.0.conv2.0.layers.")) for k in sd)
    c0 = int(need_tensor(sd, "conv1.conv.weight", path, what).shape[0])
    try:
        layers = tuple(_block_count(sd, s) for s in ("conv2", "conv3", "conv4"))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if min(layers) < 1:
        raise CheckpointError(f"{path}: a stage without blocks (blocks per stage {list(layers)}): not {what}")
    channels = (c0,) + tuple(
        int(need_tensor(sd, f"{s}.0.conv3.conv.weight", path, what).shape[0]) for s in ("conv2", "conv3", "conv4")
    )
    feature_dim = int(need_tensor(sd, "fc.0.weight", path, what).shape[0])
    mid = channels[1] // 4
    hidden = int(need_tensor(sd, "conv2.0.gate.fc1.weight", path, what).shape[0])
    if hidden < 1 or mid % hidden:
        raise CheckpointError(
            f"{path}: conv2.0.gate.fc1.weight has {hidden} outputs for {mid} channels: no gate reduction fits"
        )
    stem_in = "conv1.bn.running_mean" not in sd
    if ain:
        found = tuple(
            tuple(f"{s}.{b}.IN.weight" in sd for b in range(n)) for s, n in zip(("conv2", "conv3", "conv4"), layers)
        )
        if found != AIN_PATTERN:
            raise CheckpointError(
                f"{path}: OSNet-AIN blocks with InstanceNorm {found}, expected the searched pattern "
                f"{AIN_PATTERN}: an AIN variant this importer does not know"
            )
        norm = "ain"
    elif any(re.match(r"conv2\.\d+\.IN\.weight$", k) for k in sd) or stem_in:
        if not stem_in:
            raise CheckpointError(
                f"{path}: stage-2 blocks have InstanceNorm but the stem has BatchNorm statistics: "
                "neither osnet_ibn nor osnet_ain"
            )
        norm = "ibn"
    else:
        norm = "bn"
    classes = int(sd["classifier.weight"].shape[0]) if "classifier.weight" in sd else 0
    try:
        cfg = OSNetConfig(
            img_size=img_size,
            channels=channels,
            layers=layers,
            feature_dim=feature_dim,
            norm=norm,
            gate_reduction=mid // hidden,
            num_classes=classes,
            pixel_mean=pixel_mean or IMAGENET_MEAN,
            pixel_std=pixel_std or IMAGENET_STD,
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    width = next((w for w, c in WIDTHS.items() if c == channels), None)
    prefix = {"bn": "osnet", "ibn": "osnet_ibn", "ain": "osnet_ain"}[norm]
    name = f"{prefix}_{width}" if width and layers == (2, 2, 2) else f"{prefix}_{'-'.join(map(str, channels))}"
    return cfg, name


def import_torchreid(sd: dict, path: Path, opts) -> tuple[OSNet, list[str], list[str]]:
    notes: list[str] = []
    if opts.pixel_mean or opts.pixel_std:
        notes.append("pixel statistics from the options, not torchreid's ImageNet defaults")
    cfg, name = osnet_config_from_weights(sd, path, tuple(opts.img_size), opts.pixel_mean, opts.pixel_std)
    model = OSNet(cfg)
    load_state_dict_checked(model, _fill_batch_counters(model, sd, notes), path)
    model.preset = name
    return model, [], notes


def stem_maxpool(keys: set[str], choice: str) -> tuple[str, str]:
    """The stem pool of a fast-reid file and why. fast-reid pooled with padding 1 until 2020-11-06 and with
    ceil_mode since; the weights cannot tell, but the key names date some files: ``heads.bnneck.*`` was renamed on
    2020-09-10 (so the file is older: legacy, e.g. every v0.1.1 model-zoo file) and the classifier became
    ``heads.weight`` on 2021-03-30 (newer: ceil). Between the two it is a guess, said so."""
    if choice != "auto":
        return choice, f"stem max pool '{choice}' as asked"
    if any(k.startswith("heads.bnneck.") for k in keys):
        return "legacy", "stem max pool 'legacy' (padding 1): the heads.bnneck keys date the file before Sep 2020"
    if "heads.weight" in keys:
        return "ceil", "stem max pool 'ceil': the heads.weight classifier key dates the file after Mar 2021"
    return "ceil", (
        "stem max pool 'ceil' (fast-reid since Nov 2020) is a guess: the keys do not date this file; "
        "pass --maxpool legacy for weights trained before Nov 2020"
    )


def fastreid_config_from_weights(sd: dict, path: Path, opts, maxpool: str) -> tuple[ResNetReIDConfig, str]:
    what = "a fast-reid ResNet state dict"
    width = int(need_tensor(sd, "backbone.conv1.weight", path, what).shape[0])
    layers = []
    for i in range(1, 5):
        n = {int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.conv1\.weight$", k))}
        if not n or n != set(range(len(n))):
            raise CheckpointError(f"{path}: backbone.layer{i} has blocks {sorted(n)}: not {what}")
        layers.append(len(n))
    if "backbone.layer1.0.conv3.weight" not in sd:
        raise CheckpointError(
            f"{path}: no backbone.layer1.0.conv3.weight: basic-block ResNets (R18/R34) are not "
            "supported, only bottleneck ones (R50, R101)"
        )
    if any(k.startswith("backbone.") and ".se." in k for k in sd):
        raise CheckpointError(f"{path}: squeeze-excitation blocks (WITH_SE) are not supported")
    if "heads.bottleneck.0.weight" in sd and sd["heads.bottleneck.0.weight"].ndim == 4:
        raise CheckpointError(f"{path}: an embedding convolution in the head (EMBEDDING_DIM > 0) is not supported")
    non_local = [
        len({int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.NL_{i}\.(\d+)\.g\.weight$", k))})
        for i in range(1, 5)
    ]
    inter = next((int(v.shape[0]) for k, v in sd.items() if re.match(r"backbone\.NL_\d\.0\.g\.weight$", k)), 1)
    has_p = "heads.pool_layer.p" in sd
    pooling = opts.pooling or ("gem" if has_p else "avg")
    if has_p and pooling != "gem":
        raise CheckpointError(
            f"{path}: the weights hold a learned GeM exponent (heads.pool_layer.p) but --pooling {pooling}"
        )
    mean, std = _fastreid_pixels(sd, path, opts)
    try:
        cfg = ResNetReIDConfig(
            img_size=tuple(opts.img_size),
            layers=tuple(layers),
            base_width=width,
            last_stride=opts.last_stride,
            ibn="backbone.layer1.0.bn1.IN.weight" in sd,
            non_local=tuple(non_local),
            non_local_inter=inter,
            pooling=pooling,
            maxpool=maxpool,
            pixel_mean=mean,
            pixel_std=std,
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    depth = {(3, 4, 6, 3): "r50", (3, 4, 23, 3): "r101"}.get(tuple(layers), "r" + "-".join(map(str, layers)))
    name = f"{'sbs' if any(non_local) or pooling == 'gem' else 'bot'}_{depth}{'_ibn' if cfg.ibn else ''}"
    return cfg, name


def _fastreid_pixels(sd: dict, path: Path, opts) -> tuple[tuple, tuple]:
    """The 0-1 pixel statistics: the checkpoint's buffers / 255, checked against the options when both exist."""
    stored = {}
    for k in ("pixel_mean", "pixel_std"):
        if k in sd:
            v = sd[k].reshape(-1).double()
            if v.numel() != 3:
                raise CheckpointError(f"{path}: {k} has {v.numel()} values, expected 3 (R, G, B)")
            stored[k] = tuple(float(x) / FASTREID_SCALE for x in v)
    out = []
    for k, default in (("pixel_mean", IMAGENET_MEAN), ("pixel_std", IMAGENET_STD)):
        given = getattr(opts, k)
        if given and k in stored and max(abs(a - b) for a, b in zip(given, stored[k])) > 1e-4:
            raise CheckpointError(
                f"{path}: its {k} is {[round(v * FASTREID_SCALE, 3) for v in stored[k]]} on 0-255 "
                f"pixels ({[round(v, 5) for v in stored[k]]} on 0-1), but --{k.replace('_', '-')} "
                f"gives {list(given)}"
            )
        out.append(tuple(given or stored.get(k) or default))
    return out[0], out[1]


def import_fastreid(sd: dict, path: Path, opts) -> tuple[ResNetReID, list[str], list[str]]:
    maxpool, why = stem_maxpool(set(sd), opts.maxpool)
    notes = [why, f"last stride {opts.last_stride} (not stored in the weights)"]
    sd = {
        ("heads.bottleneck.0." + k[len("heads.bnneck.") :] if k.startswith("heads.bnneck.") else k): v
        for k, v in sd.items()
    }
    unused = sorted(
        k for k in sd if k in ("heads.weight", "heads.classifier.weight") or k.startswith("heads.classifier.")
    )
    if not any(k.startswith("heads.bottleneck.") for k in sd):
        raise CheckpointError(
            f"{path}: no BNNeck (heads.bottleneck.0.* or heads.bnneck.*): not a fast-reid BoT/SBS model"
        )
    cfg, name = fastreid_config_from_weights(sd, path, opts, maxpool)
    if (any(cfg.non_local) or cfg.pooling == "gem") and tuple(opts.img_size) == (256, 128):
        notes.append("fast-reid's SBS configs test at 384x128: pass --img-size 384x128 if yours did")
    model = ResNetReID(cfg)
    mapped = {k: v for k, v in sd.items() if k not in unused and k not in ("pixel_mean", "pixel_std")}
    load_state_dict_checked(model, _fill_batch_counters(model, mapped, notes), path)
    model.preset = name
    return model, unused, notes
