"""Terminal output helpers: tables and progress bars that stay readable when piped to a file (no colour codes)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def table(title: str, columns: list[str], rows: Iterable[Iterable]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right", overflow="fold")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


@contextlib.contextmanager
def progress(description: str, total: int | None, show: bool = True) -> Iterator:
    """A progress bar; yields advance(n=1). On a non-terminal it prints start and end lines instead of redraws.
    ``show=False`` (ranks other than 0 under torchrun) draws nothing."""
    if not show:
        yield lambda n=1: None
        return
    if not sys.stderr.isatty():
        err_console.print(f"{description} ...")
        done = [0]

        def advance(n: int = 1):
            done[0] += n

        yield advance
        err_console.print(f"{description}: done ({done[0]}{'/' + str(total) if total else ''})")
        return
    cols = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=err_console, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)
