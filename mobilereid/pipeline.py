"""`mobilereid pipeline`: chains the stages on a config; the default runs on the built-in synthetic dataset.

Stages present so far: synthetic data -> dataset check. Later stages (train, compress, export, evaluate,
report) attach here as they land; a stage is skipped when its output exists for the same inputs.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .console import console, progress
from .errors import MobileReIDError

DEFAULT_CONFIG = {"data": {"synthetic": True, "ids": 100, "cameras": 6, "seed": 0, "height": 256, "width": 128}}


def load_config(path: Path | None) -> dict:
    if path is None:
        return json.loads(json.dumps(DEFAULT_CONFIG))
    if not path.is_file():
        raise MobileReIDError(f"{path}: pipeline config not found")
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise MobileReIDError(f"{path}: not valid TOML ({exc})") from None
    merged = json.loads(json.dumps(DEFAULT_CONFIG))
    for section, values in cfg.items():
        merged.setdefault(section, {}).update(values)
    return merged


def stage_data(cfg: dict, workdir: Path) -> Path:
    from .data.synth import SynthConfig, generate, plan

    d = cfg["data"]
    if not d.get("synthetic", True):
        root = Path(d["root"])
        return root
    synth = SynthConfig(ids=d["ids"], cameras=d["cameras"], seed=d["seed"], height=d["height"], width=d["width"])
    key = json.dumps(synth.__dict__, sort_keys=True, default=list)
    root = workdir / "data"
    stamp = workdir / "data.stamp"
    if root.is_dir() and stamp.is_file() and stamp.read_text() == key:
        console.print(f"[data] up to date: {root}")
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    total = len(plan(synth))
    with progress(f"[data] synthesising {total} images", total) as advance:
        generate(root, synth, on_step=advance)
    stamp.write_text(key)
    return root


def run_pipeline(config: Path | None, workdir: Path) -> None:
    from .cli import check_and_print

    cfg = load_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    root = stage_data(cfg, workdir)
    check_and_print(root)
