"""Quantization recipes: editable TOML files, one per target and model family, shipped in the repo's quant/.

A recipe says which variants to produce, how to quantize (static or dynamic, per-channel or not, calibration
size, IO dtype, ops kept in float) and the drift budget the verification enforces. `--recipe FILE` replaces the
default; keys missing from a user recipe fall back to the default's.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import ExportError
from ..tomlconfig import deep_merge, read_toml

RECIPE_DIR = Path(__file__).resolve().parents[2] / "quant"


def default_recipe_path(target: str, family: str) -> Path:
    for name in (f"{target}_{family}.toml", f"{target}_any.toml"):
        if (RECIPE_DIR / name).is_file():
            return RECIPE_DIR / name
    raise ExportError(f"no default recipe for target {target!r} and model family {family!r} in {RECIPE_DIR}")


def load_recipe(target: str, family: str, path: str | Path | None = None) -> dict:
    default_path = default_recipe_path(target, family)
    recipe = tomllib.loads(default_path.read_text())
    recipe["source"] = str(default_path)
    if path is not None:
        path = Path(path)
        user = read_toml(path, "recipe file", ExportError)
        if user.get("target", target) != target:
            raise ExportError(f"{path}: recipe is for target {user['target']!r}, not {target!r}")
        recipe = deep_merge(recipe, user)
        recipe["source"] = str(path)
    return recipe
