"""Quantization recipes: editable TOML files, one per target and model family, shipped inside the package
(mobilereid/recipes/).

A recipe says which variants to produce, how to quantize (static or dynamic, per-channel or not, calibration
size, IO dtype, ops kept in float) and the drift budget the verification enforces. `--recipe FILE` replaces the
default; keys missing from a user recipe fall back to the default's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from ..errors import ExportError
from ..tomlconfig import deep_merge, is_type, read_toml
from .targets import TARGETS

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"  # package data: a wheel ships them


def default_recipe_path(target: str, family: str) -> Path:
    for name in (f"{target}_{family}.toml", f"{target}_any.toml"):
        if (RECIPE_DIR / name).is_file():
            return RECIPE_DIR / name
    raise ExportError(f"no default recipe for target {target!r} and model family {family!r} in {RECIPE_DIR}")


_INT8_SCHEMA = {
    "ops": (
        "list of names",
        "every op the quantizer takes",
        "ExecuTorch: quantize only these op types (linear, conv2d, ...)",
    ),
    "dynamic_modules": ("list of regexes", "[]", "ExecuTorch: linears whose module name matches get dynamic int8"),
    "smooth_alpha": ("number in (0, 1]", "off", "ExecuTorch: SmoothQuant scale migration strength"),
    "per_channel": ("bool", "true", "per-output-channel weight scales"),
    "calibration_images": ("int >= 1", "64", "images that calibrate static activation ranges"),
    "activation_ranges": (
        "name",
        "default",
        "range rule: default (the converter's), minmax, mean_minmax, p90_minmax (activation_ranges.py)",
    ),
    "io_dtype": ("name", "int8 (edgetpu: uint8)", "input/output tensor type of full-integer LiteRT models"),
    "float_ops": ("list of op names", "[]", "LiteRT: op types kept in float (refused on integer-only targets)"),
    "float_nodes": ("list of names", "[]", "LiteRT: single nodes kept in float (from quant-sensitivity)"),
    "int16_ops": ("list of op names", "[]", "LiteRT (litert-torch route): op types with int16 activations"),
    "int16_headroom": ("number 1..256", "1.0", "widen int16 activation ranges by this factor"),
}
# Every recipe key: (type, default, meaning). The validation refuses any other key; docs/recipes.md is generated from
# this table (scripts/gen_docs.py). `source` is set by the loader (the file a recipe came from), never by users.
RECIPE_SCHEMA = {
    "": {
        "target": ("name", "the file's", "the target the recipe is for (targets.py); needed with several --target"),
        "family": ("name", "the file's", "model family: vit, sclnet, osnet, resnet, external, any"),
        "converter": ("name", "onnx2tf", "TFLite route: onnx2tf or litert-torch"),
        "variants": ("list of precisions", "the shipped recipe's", "precisions to produce (targets.py)"),
        "board": ("name", "cortex-m7", "tflm: board profile (recipes/boards.toml)"),
    },
    "int8": _INT8_SCHEMA,
    "int8_static": {k: (kind, "[int8]'s", meaning) for k, (kind, _, meaning) in _INT8_SCHEMA.items()},
    "verify": {
        "images": ("int >= 1", "16", "held-out images every artifact is verified on"),
        "min_cosine": ("number in [-1, 1]", "0.99", "the drift budget: mean cosine to the float model"),
    },
    "micro": {
        "reorder_operators": ("bool", "true", "tflm: reorder operators to lower the peak arena"),
        "slim": ("bool", "true", "tflm: drop what the interpreter does not need from the flatbuffer"),
        "inplace_add": (
            "bool",
            "true",
            "tflm: residual ADDs write over a dying input, through an offline arena plan (offline_plan.py)",
        ),
        "fold_projections": (
            "bool",
            "false",
            "tflm: OSNet blocks' conv3 and downsample as one conv over their concatenated inputs (residual_fold.py)",
        ),
    },
}
KNOWN = {
    section: set(keys) | ({"int8", "int8_static", "verify", "micro", "source"} if not section else set())
    for section, keys in RECIPE_SCHEMA.items()
}


def validate_recipe(recipe: dict, where: str) -> None:
    """Unknown keys and values of the wrong type or range are one-line errors naming the file, not silent defaults."""
    for section, known in KNOWN.items():
        table = recipe if not section else recipe.get(section, {})
        if not isinstance(table, dict):
            raise ExportError(f"{where}: [{section}] must be a table")
        unknown = sorted(set(table) - known)
        if unknown:
            raise ExportError(
                f"{where}: unknown key(s) {', '.join(unknown)} in {f'[{section}]' if section else 'the recipe'} "
                f"(known: {', '.join(sorted(known - {'source'}))})"
            )
    v, q = recipe.get("verify", {}), recipe.get("int8", {})
    mc = v.get("min_cosine")
    if not is_type(mc, float) or not -1.0 <= mc <= 1.0:
        raise ExportError(f"{where}: verify.min_cosine must be a number between -1 and 1, got {mc!r}")
    for key, table in (("verify.images", v.get("images")), ("int8.calibration_images", q.get("calibration_images", 1))):
        if not is_type(table, int) or table < 1:
            raise ExportError(f"{where}: {key} must be a whole number >= 1, got {table!r}")
    if not isinstance(recipe.get("variants"), list) or not all(isinstance(x, str) for x in recipe["variants"]):
        raise ExportError(f"{where}: variants must be a list of names, got {recipe.get('variants')!r}")
    for section in ("int8", "int8_static"):
        table = recipe.get(section, {})
        for key in ("ops", "dynamic_modules"):
            val = table.get(key, [])
            if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
                raise ExportError(f"{where}: {section}.{key} must be a list of names, got {val!r}")
        for pattern in table.get("dynamic_modules", []):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ExportError(
                    f"{where}: {section}.dynamic_modules: {pattern!r} is not a regular expression ({exc})"
                ) from None
        headroom = table.get("int16_headroom", 1.0)
        if not is_type(headroom, float) or not 1.0 <= headroom <= 256.0:
            raise ExportError(f"{where}: {section}.int16_headroom must be a number from 1 to 256, got {headroom!r}")
        alpha = table.get("smooth_alpha", 0.5)
        if not is_type(alpha, float) or not 0.0 < alpha <= 1.0:
            raise ExportError(f"{where}: {section}.smooth_alpha must be a number in (0, 1], got {alpha!r}")
    check_int16_request(recipe, where)
    target = TARGETS.get(recipe.get("target", ""))
    unknown = [v for v in recipe["variants"] if target is not None and v not in target.variants]
    if unknown:
        raise ExportError(
            f"{where}: unknown {target.name} variant(s) {', '.join(unknown)} (choose from {', '.join(target.variants)})"
        )
    flags = [("int8.per_channel", q.get("per_channel", True))]
    flags += [(f"micro.{k}", val) for k, val in recipe.get("micro", {}).items()]
    for key, val in flags:
        if not isinstance(val, bool):
            raise ExportError(f"{where}: {key} must be true or false, got {val!r}")


def check_int16_request(recipe: dict, where: str) -> None:
    """An int16 request (``int8.int16_ops``, the ``int16x8`` variant) on a runtime without int16 kernels, or on the
    TFLite route that cannot mix precisions per op, is a one-line error naming the recipe."""
    target = recipe.get("target", "")
    for section in ("int8", "int8_static"):
        ops = recipe.get(section, {}).get("int16_ops", [])
        if not isinstance(ops, list) or not all(isinstance(x, str) and x for x in ops):
            raise ExportError(f"{where}: {section}.int16_ops must be a list of TFLite op type names, got {ops!r}")
        if ops and target in TARGETS and TARGETS[target].no_int16:
            raise ExportError(
                f"{where}: {section}.int16_ops asks for int16 activations, but {TARGETS[target].no_int16}"
            )
        if ops and target == "tflite" and recipe.get("converter", "onnx2tf") != "litert-torch":
            raise ExportError(
                f'{where}: {section}.int16_ops needs converter = "litert-torch" (the onnx2tf route\'s '
                "TensorFlow converter cannot mix int8 and int16 per op)"
            )
    if "int16x8" in recipe.get("variants", []) and target in TARGETS and TARGETS[target].no_int16:
        raise ExportError(f"{where}: variant int16x8 asks for int16 activations, but {TARGETS[target].no_int16}")


def recipe_paths_by_target(targets: list[str], paths) -> dict[str, Path]:
    """Which user recipe applies to which target. Each recipe names its target (``target = "tflite"``); a recipe
    without one is only accepted for a single-target request. A recipe for a target not requested, two recipes for
    one target, or a nameless recipe among several targets is a one-line error: a recipe is never silently
    ignored (it was, before, with more than one target)."""
    if paths is None:
        return {}
    if isinstance(paths, dict):  # already matched (the second export process gets the first one's choice)
        return {t: Path(p) for t, p in paths.items() if t in targets}
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    chosen: dict[str, Path] = {}
    for path in paths:
        named = read_toml(path, "recipe file", ExportError).get("target")
        if named is None:
            if len(targets) != 1:
                raise ExportError(
                    f"{path}: the recipe names no target and {len(targets)} targets were asked for "
                    f'({", ".join(targets)}); add target = "..." to it'
                )
            named = targets[0]
        if named not in targets:
            raise ExportError(
                f"{path}: recipe is for target {named!r}, which this export does not produce ({', '.join(targets)})"
            )
        if named in chosen:
            raise ExportError(f"{path}: a second recipe for target {named!r} (the first: {chosen[named]})")
        chosen[named] = path
    return chosen


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
    validate_recipe(recipe, recipe["source"])
    return recipe
