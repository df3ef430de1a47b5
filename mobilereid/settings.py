"""One declaration per option of a stage: type, default, range and help, as dataclass field metadata.

A stage's configuration is a dataclass (``TrainConfig``, ``CompressConfig``, ``QuantFinetuneConfig``, ...) whose
fields are declared with :func:`setting`. Both user-facing surfaces are derived from that one declaration: the
command's options (:func:`cli_options` adds a typer option per field, with the default, range and help) and the
pipeline's TOML section (:func:`section_from_table` checks keys, types and ranges and fills in the defaults). So a
default exists once, and the same value is refused the same way wherever it came from; the error names it in the
vocabulary of its source: ``--keep-ratio 1.5: ...`` on the command line, ``run.toml: [compress] keep_ratio = 1.5:
...`` in a config file. ``docs/cli.md`` and ``docs/pipeline-config.md`` are generated from the same declarations
(``scripts/gen_docs.py``).

Fractions follow one naming rule: ``keep_*`` is the fraction kept, every other ``*_rate`` the fraction removed; mAP
limits are in points (0.5 = half a point), on the command line and in TOML alike.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import MobileReIDError


@dataclass(frozen=True)
class Spec:
    """How one field is checked and shown. ``above``/``below`` are exclusive bounds, ``minimum``/``maximum``
    inclusive; ``flag``: the command-line spelling when it is not ``--field-name`` (e.g. ``-p``); ``key``: the TOML
    key when it is not the field name; ``cli``/``toml``: whether the field is offered there; ``auto``: the TOML
    string "auto" stands for None (TOML has no null)."""

    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple | None = None
    flag: str | None = None
    short: str | None = None
    key: str | None = None
    cli: bool = True
    toml: bool = True
    auto: bool = False


def setting(default: Any, help: str, **spec) -> Any:
    """A dataclass field with its declaration (see :class:`Spec` for the keywords)."""
    meta = {"spec": Spec(help, **spec)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "spec" in f.metadata]


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata["spec"]


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _base_types(hint) -> tuple[tuple, bool]:
    """(accepted python types, None allowed) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        return kinds, type(None) in args
    return (typing.get_origin(hint) or hint,), False


def _is(value, kinds: tuple) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _range_text(s: Spec) -> str:
    parts = []
    if s.choices:
        return "one of " + ", ".join(str(c) for c in s.choices)
    if s.minimum is not None:
        parts.append(f">= {s.minimum:g}")
    if s.above is not None:
        parts.append(f"> {s.above:g}")
    if s.maximum is not None:
        parts.append(f"<= {s.maximum:g}")
    if s.below is not None:
        parts.append(f"< {s.below:g}")
    return " and ".join(parts)


def problem(cls, f: dataclasses.Field, value) -> str | None:
    """What is wrong with ``value`` for field ``f`` of ``cls`` ("must be ..."), or None."""
    s = spec_of(f)
    kinds, nullable = _base_types(_hints(cls)[f.name])
    if value is None:
        return None if nullable else f"must be {_kind_name(kinds)}"
    if not _is(value, kinds):
        return f"must be {_kind_name(kinds)}"
    if s.choices and value not in s.choices:
        return f"must be {_range_text(s)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bad = (
            (s.minimum is not None and value < s.minimum)
            or (s.maximum is not None and value > s.maximum)
            or (s.above is not None and value <= s.above)
            or (s.below is not None and value >= s.below)
        )
        if bad:
            return f"must be {_range_text(s)}"
    return None


def _kind_name(kinds: tuple) -> str:
    names = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def cli_name(f: dataclasses.Field) -> str:
    return spec_of(f).flag or "--" + f.name.replace("_", "-")


def toml_key(f: dataclasses.Field) -> str:
    return spec_of(f).key or f.name


def check(obj, name_of: Callable[[dataclasses.Field], str], fields: list[dataclasses.Field] | None = None) -> None:
    """Every declared field of ``obj`` has its type and range; a one-line error naming it by ``name_of`` otherwise."""
    cls = type(obj)
    for f in fields if fields is not None else declared(cls):
        value = getattr(obj, f.name)
        bad = problem(cls, f, value)
        if bad:
            raise MobileReIDError(f"{name_of(f)} {value!r}: {bad}")


def check_cli(obj) -> None:
    check(obj, cli_name, [f for f in declared(type(obj)) if spec_of(f).cli])


def toml_fields(cls) -> list[dataclasses.Field]:
    return [f for f in declared(cls) if spec_of(f).toml]


def section_from_table(
    cls, table: dict, where: str, section: str, extra: dict | None = None, exclude: tuple[str, ...] = ()
) -> dict:
    """A TOML section checked against ``cls``'s declarations: unknown keys, types and ranges are one-line errors
    naming ``where: [section] key``; missing keys take the declared defaults. ``extra``: keys the section has
    besides the dataclass's ({key: (check(value) -> problem or None, default)}). Returns {field name: value}, plus
    the extra keys, as the stage's config takes them. ``exclude``: fields the section does not offer (set elsewhere)."""
    extra = extra or {}
    if not isinstance(table, dict):
        raise MobileReIDError(f"{where}: [{section}] must be a table")
    fields = {toml_key(f): f for f in toml_fields(cls) if f.name not in exclude}
    unknown = sorted(set(table) - set(fields) - set(extra))
    if unknown:
        raise MobileReIDError(
            f"{where}: unknown key(s) {', '.join(unknown)} in [{section}]; known: "
            f"{', '.join(list(extra) + list(fields))}"
        )
    out = {}
    for key, (check_fn, default) in extra.items():
        value = table.get(key, copy.deepcopy(default))
        bad = check_fn(value)
        if bad:
            raise MobileReIDError(f"{where}: [{section}] {key} = {value!r}: {bad}")
        out[key] = value
    for key, f in fields.items():
        value = table.get(key, default_of(f))
        if spec_of(f).auto and value == "auto":
            value = None
        bad = problem(cls, f, value)
        if bad:
            raise MobileReIDError(f"{where}: [{section}] {key} = {value!r}: {bad}")
        out[f.name] = value
    return out


def _cli_annotation(cls, f: dataclasses.Field):
    kinds, nullable = _base_types(_hints(cls)[f.name])
    kind = kinds[0]
    return kind | None if nullable else kind


def _cli_help(f: dataclasses.Field) -> str:
    s = spec_of(f)
    rng = _range_text(s)
    return (
        s.help
        + (f" [{rng}]" if rng and not s.choices else "")
        + (f" ({', '.join(map(str, s.choices))})" if s.choices else "")
    )


def cli_options(cls, skip: tuple[str, ...] = ()) -> Callable:
    """Decorate a typer command so that it takes one option per declared CLI field of ``cls`` (default, flag and
    help from the declaration) and receives them as ``settings=cls(...)``, checked like a TOML section would be.
    The command's own parameters come first; ``skip`` leaves fields at their default (the command sets them)."""
    import typer

    fields = [f for f in declared(cls) if spec_of(f).cli and f.name not in skip]
    own = set(cls.__dict__.get("__annotations__", {}))
    fields.sort(key=lambda f: f.name not in own)  # the command's own options first, shared ones (compute) last

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "settings"]
        taken = {p.name for p in own}
        added = []
        for f in fields:
            if f.name in taken:
                raise TypeError(f"{fn.__name__}: parameter {f.name} is also a field of {cls.__name__}")
            default, flag = default_of(f), cli_name(f)
            decls = [f"{flag}/--no-{flag[2:]}"] if _cli_annotation(cls, f) is bool else [flag]
            decls += [spec_of(f).short] if spec_of(f).short else []
            added.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=_cli_annotation(cls, f),
                    default=typer.Option(default, *decls, help=_cli_help(f), show_default=True),
                )
            )

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {f.name: kwargs.pop(f.name) for f in fields}
            settings = cls(**values)
            check_cli(settings)
            return fn(*args, settings=settings, **kwargs)

        params = own + added
        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def reference_rows(cls, source: str) -> list[list[str]]:
    """(name, type, default, range, help) of each declared field, for generated docs; ``source`` is "cli" or "toml"."""
    rows = []
    for f in declared(cls):
        s = spec_of(f)
        if (source == "cli" and not s.cli) or (source == "toml" and not s.toml):
            continue
        kinds, nullable = _base_types(_hints(cls)[f.name])
        kind = " or ".join(k.__name__ for k in kinds) + (" or auto" if s.auto else "")
        default = default_of(f)
        shown = ("auto" if s.auto else "none") if default is None else json.dumps(default)
        rows.append([cli_name(f) if source == "cli" else toml_key(f), kind, shown, _range_text(s), s.help])
    return rows
