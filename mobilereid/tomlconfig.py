"""Reading user TOML files (recipes, pipeline configs) with one-line errors, and merging them over defaults."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from .errors import MobileReIDError


def read_toml(path: str | Path, what: str, error: type[MobileReIDError] = MobileReIDError) -> dict:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None


def is_type(value, kind: type) -> bool:
    """A TOML value of the given Python type, where TOML booleans are not numbers and integers count as floats."""
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` laid on top; nested tables merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
