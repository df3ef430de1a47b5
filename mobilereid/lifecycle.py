"""Helper processes that die with the process that started them.

Why: after a `kill -9` of a command its spawned helpers (the export's second process, the pipeline's chain workers)
ran on as orphans: they finished their work into the output folder ~40 s later, then idled. Each helper calls
`die_with_parent` first thing. On Linux the kernel then sends it SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG); elsewhere a thread polling the parent's pid sends it. SIGTERM unwinds (interrupts.py), so
an orphan still removes its temporary files; one still running GRACE_SECONDS after its parent died is killed.

PR_SET_PDEATHSIG fires when the *thread* that started the child ends, not its whole process: a helper must be
started from a thread that outlives it (the main thread, or the export's core watcher, which second_process.py ends
only after its helper).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5
GRACE_SECONDS = 30.0


def die_with_parent(parent: int | None = None) -> None:
    """In a child process, at its start: SIGTERM (which unwinds) when the parent dies, SIGKILL GRACE_SECONDS later.
    ``parent``: the pid of the process that started this one (``os.getpid()`` there), so that a parent that died
    before this call is noticed too; by default multiprocessing's record of it."""
    from .interrupts import unwind_once

    if parent is None:
        import multiprocessing

        known = multiprocessing.parent_process()
        parent = known.pid if known is not None else os.getppid()
    unwind_once()
    armed = _kernel_signals_parent_death(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed; nothing to clean up yet
        os._exit(128 + signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent, armed), name="parent-watch", daemon=True).start()


def _kernel_signals_parent_death(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, armed: bool) -> None:
    """Notices the parent's death (the child is re-parented); signals it only when the kernel does not."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    if not armed:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)  # a clean-up that hangs (a native call that never returns to Python) ends here
    os.kill(os.getpid(), signal.SIGKILL)


def end_on_interrupt(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as a task of a process-pool worker whose interrupt (SIGTERM, Ctrl-C) ends the worker
    once the task has unwound. Why: the pool's worker loop reports any exception of a task, SystemExit included,
    as its result and waits for the next task, so a worker interrupted by its parent's death lived on, idle."""
    try:
        return fn(*args, **kwargs)
    except (SystemExit, KeyboardInterrupt) as exc:
        code = exc.code if isinstance(exc, SystemExit) else 128 + signal.SIGINT
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code if isinstance(code, int) else 1)
