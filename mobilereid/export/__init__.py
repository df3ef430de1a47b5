"""Export a checkpoint to every target and verify each artifact in its runtime (run.py), the targets declared in
targets.py, one module per target behind ``export_<target>(job, recipe)``.

The package itself imports nothing heavy: ``export_checkpoint`` and friends load run.py (torch and the converters)
on first use, so that reading the target table (the CLI's help, the docs) stays fast.
"""

from __future__ import annotations

_RUN_NAMES = {"export_checkpoint", "make_job", "bake_camera"}


def __getattr__(name: str):
    if name in _RUN_NAMES:
        from . import run

        return getattr(run, name)
    if name == "resolve_targets":
        from .targets import resolve_targets

        return resolve_targets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
