"""Any trained torch ReID model, brought as a `torch.export` ExportedProgram (``.pt2``, `torch.export.save`).

The program's forward must map one float image batch (1, 3, H, W) to one embedding (1, D): whatever the user's
architecture (OSNet, ResNet-50-IBN, MobileNet, ...), the graph is already captured, so no model code is needed and
none is executed. What the graph cannot say, its input normalisation, comes from a TOML file beside it with the same
stem (``osnet.pt2`` -> ``osnet.toml``: ``mean = [..]``, ``std = [..]``, ``colour_order = "RGB"``); without one,
ImageNet statistics are assumed and the sidecars say so (``preprocess_source``).

Safety: `torch.export.load` unpickles, execs and loads compiled code for some archive contents, so torch never
reads the user's file: it reads a rewrite of it that `pt2_archive.checked_copy` checked member by member (static
ATen graphs only; see that module for what is refused and why). Such a model is exported and evaluated like the native
families, but it cannot be trained, compressed or quantization-fine-tuned here (there is no module to change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError
from ..tomlconfig import read_toml
from .pt2_archive import checked_copy

SUFFIX = ".pt2"


@dataclass
class ExternalConfig:
    img_size: tuple[int, int]
    embedding_dim: int
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    preprocess_source: str = "assumed ImageNet statistics (no TOML beside the .pt2)"

    def to_dict(self) -> dict:
        return {
            "img_size": list(self.img_size),
            "embedding_dim": self.embedding_dim,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "preprocess_source": self.preprocess_source,
        }


class ExternalReID(nn.Module):
    """An ExportedProgram's module with the attributes mobilereid's export and evaluation read."""

    family = "external"
    uses_camera = False

    def __init__(self, program: nn.Module, cfg: ExternalConfig):
        super().__init__()
        self.program, self.cfg, self.preset = program, cfg, None

    @property
    def feature_dim(self) -> int:
        return self.cfg.embedding_dim

    def train(self, mode: bool = True):
        """The graph was captured in eval mode and has no training mode to switch to."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The program was captured for batch 1: larger batches run image by image."""
        if x.shape[0] == 1:
            return self.program(x)
        return torch.cat([self.program(x[i : i + 1]) for i in range(x.shape[0])])


def read_preprocess(path: Path) -> dict:
    side = path.with_suffix(".toml")
    if not side.is_file():
        return {}
    d = read_toml(side, "preprocessing file", CheckpointError)
    unknown = set(d) - {"mean", "std", "colour_order"}
    if unknown:
        raise CheckpointError(f"{side}: unknown keys {sorted(unknown)} (known: mean, std, colour_order)")
    if d.get("colour_order", "RGB") != "RGB":
        raise CheckpointError(
            f"{side}: colour_order {d['colour_order']!r}: only RGB inputs are supported "
            "(re-export with the channel flip inside the model)"
        )
    out = {"preprocess_source": str(side)}
    for k in ("mean", "std"):
        if k in d:
            v = d[k]
            if not (isinstance(v, list) and len(v) == 3 and all(isinstance(t, (int, float)) for t in v)) or (
                k == "std" and min(v) <= 0
            ):
                raise CheckpointError(f"{side}: {k} must be three numbers{' > 0' if k == 'std' else ''}, got {v!r}")
            out[f"pixel_{k}"] = tuple(float(t) for t in v)
    return out


def load_pt2(path: str | Path) -> tuple[ExternalReID, dict]:
    """Load and validate a .pt2 ReID model; returns (model, a checkpoint-like state dict of its description)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'is a directory, not a .pt2 file' if path.is_dir() else 'file not found'}")
    try:
        with checked_copy(path) as copy:  # pt2_archive.py: torch loads exactly what was checked
            ep = torch.export.load(str(copy))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: torch.export.load failed ({' '.join(str(exc).split())[:200]})") from None
    inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    metas = [ep.graph.find_nodes(op="placeholder", target=s.arg.name)[0].meta.get("val") for s in inputs]
    if len(inputs) != 1 or metas[0] is None or tuple(metas[0].shape[:2]) != (1, 3) or len(metas[0].shape) != 4:
        shapes = [tuple(m.shape) if m is not None else "?" for m in metas]
        raise CheckpointError(f"{path}: the program must take one (1, 3, H, W) image, it takes {shapes}")
    if metas[0].dtype != torch.float32:
        raise CheckpointError(f"{path}: the program's input must be float32, it is {metas[0].dtype}")
    h, w = int(metas[0].shape[2]), int(metas[0].shape[3])
    module = ep.module()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, h, w))
    except Exception as exc:
        raise CheckpointError(
            f"{path}: the program fails on a (1, 3, {h}, {w}) image ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"{path}: the program must return one (1, D) embedding, it returns {shape}")
    cfg = ExternalConfig(img_size=(h, w), embedding_dim=int(out.shape[1]), **read_preprocess(path))
    model = ExternalReID(module, cfg).eval()
    return model, {"family": "external", "preset": None, "config": cfg.to_dict(), "extra": {}}
