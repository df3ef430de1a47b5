"""Checkpoints: a plain state dict plus the config that rebuilds the model (no pickled classes).

Saved with `torch.save` as a dict of tensors and plain Python values, loaded with `torch.load(weights_only=True)`,
so a checkpoint can never execute code. Written to a temporary file and renamed, so a crash leaves no half file;
a failed write (full disk, quota) is one line naming the checkpoint, and the temporary file of a process killed
mid-write is removed by the next save to the same name. A stored config is checked (`configcheck`) before a model
is built from it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, write_failure
from .configcheck import ConfigValueError, check_parameter_count, check_stored_config
from .registry import FAMILIES, build_from_config, model_family

FORMAT = "mobilereid-checkpoint"
VERSION = 1


def model_config(model: nn.Module) -> dict:
    return model.cfg.to_dict()


def on_cpu(obj):
    """``obj`` with every tensor inside (dicts, lists, tuples: an optimizer's state) moved to the CPU: a checkpoint
    written on a GPU loads on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, model: nn.Module, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "family": model_family(model),
        "preset": getattr(model, "preset", None),
        "config": model_config(model),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "extra": on_cpu(extra or {}),
    }
    sweep_stale_temporaries(path.parent, path.name)
    kept = "the existing file is unchanged" if path.exists() else "nothing was kept"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a Python file, not a path: torch's C++ writer would drop the errno of a full disk
            torch.save(state, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        failed = write_failure(path, exc, kept)
        if failed is None:
            raise
        raise failed from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def sweep_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove ``.<name>.tmp<PID>`` files that save_checkpoint left when its process was killed mid-write (SIGKILL,
    power loss: no ``finally`` ran), i.e. those whose PID is no running process; ``name`` limits it to one file's.
    A live PID keeps its file (it may be writing it). Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if m and (name is None or m["name"] == name) and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def safe_torch_load(path: str | Path, what: str):
    """`torch.load(weights_only=True)` (tensors and plain values only, never code) with one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a {what} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    if not _torch_file_magic(path):
        raise CheckpointError(
            f"{path}: not a loadable {what}: not a torch file at all (neither the zip archive "
            "torch.save writes nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            # torch's message ends by suggesting weights_only=False: never, for a file we did not make
            m = re.search(r"(Unsupported global: GLOBAL [\w.]+|[\w.]+ was not an allowed global)", text)
            if m is None:  # e.g. "Unsupported operand 56": bytes no torch.save writes, not a reference to code
                op = re.search(r"Unsupported operand \d+", text)
                raise CheckpointError(
                    f"{path}: not a loadable {what}: not a torch checkpoint (its pickle data is "
                    f"damaged or foreign{': ' + op.group(0) if op else ''})"
                ) from None
            raise CheckpointError(
                f"{path}: not a loadable {what}: it holds objects other than tensors and plain values"
                f": {m.group(1)}; refused, since loading it would run code"
            ) from None
        reason = " ".join(text.split())[:200] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable {what} ({reason})") from None


def _torch_file_magic(path: Path) -> bool:
    """True for what torch.save writes: a zip archive, or (the legacy format) a pickle, protocol 2 or later."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # let torch.load report it
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".pt2":
        raise CheckpointError(
            f"{path}: a torch.export program (.pt2) can be exported and evaluated, but not trained, "
            "compressed or fine-tuned here (it has no model code to change)"
        )
    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a mobilereid checkpoint (no '{FORMAT}' header); "
            "import trained foreign weights with `mobilereid import`"
        )
    return state


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from the stored config and load its weights strictly; returns (model, checkpoint dict)."""
    path = Path(path)
    state = read_checkpoint(path)
    config, family = state.get("config"), state.get("family")
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: stored family = {family!r}: expected one of {', '.join(FAMILIES)}")
    try:
        check_stored_config(family, config)
        if family == "vit" and "token_order" not in config and config.get("keep_ratio", 1.0) < 1.0:
            config = {**config, "token_order": "rank"}  # patch elimination saved before kept tokens came in image order
        check_parameter_count(family, config)
        model = build_from_config(family, config)
    except ConfigValueError as exc:
        raise CheckpointError(f"{path}: stored config {exc}") from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: stored config does not build a model ({exc})") from None
    load_state_dict_checked(model, state["state_dict"], path)
    model.preset = state.get("preset")
    model.eval()
    return model, state


def with_identity_count(model: nn.Module, num_classes: int) -> tuple[nn.Module, list[str]]:
    """The same model with ID classifiers for ``num_classes`` identities: every tensor is copied except the
    classifiers' (freshly initialised, as a new model's are); returns the model and the names of the new tensors.
    Fine-tuning an imported or trained model on another dataset needs this: its classifier is the only part tied to
    the identities of the data it was trained on."""
    family = model_family(model)
    fresh = build_from_config(family, {**model.cfg.to_dict(), "num_classes": num_classes})
    old, new = model.state_dict(), fresh.state_dict()
    replaced = sorted(k for k in new if k not in old or old[k].shape != new[k].shape)
    tied = [k for k in replaced if "classifier" not in k]
    if tied:
        raise CheckpointError(f"changing the identity count would also change {tied[:3]} (not classifier weights)")
    fresh.load_state_dict({k: (new[k] if k in replaced else old[k]) for k in new})
    fresh.preset = getattr(model, "preset", None)
    return fresh, replaced


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """A mobilereid checkpoint (.pt) or any torch ReID model as a torch.export program (.pt2), for export and
    evaluation; returns (eval-mode model, checkpoint dict or the program's description)."""
    if Path(path).suffix == ".pt2":
        from .external import load_pt2

        return load_pt2(path)
    return load_checkpoint(path)


def load_state_dict_checked(model: nn.Module, sd: dict, path: Path | str) -> None:
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: its state dict is a {type(sd).__name__}, not a dict of tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entry {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{path}: weights do not match the model: {'; '.join(parts)}")
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tuple(sd[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors have the wrong shape (checkpoint vs model), e.g. {bad[0]}")
    model.load_state_dict(sd)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
