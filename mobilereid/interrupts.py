"""SIGTERM unwinds like Ctrl-C, so every temporary folder and file is removed by the `finally` blocks that remove
them on SIGINT: installed by the CLI for each command, and (`unwind_once`) by the helper processes a command starts
(the export's second process, the pipeline's chain workers: lifecycle.py)."""

from __future__ import annotations

import signal
import threading


def exit_cleanly_on_sigterm() -> None:
    """From now on SIGTERM raises SystemExit(143) in the main thread; a second SIGTERM kills at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def unwind_once() -> None:
    """For a helper process whose parent passes interrupts on: SIGTERM raises SystemExit(143), SIGINT
    KeyboardInterrupt, and once either has arrived both are ignored. Why: after Ctrl-C in a terminal a helper gets
    SIGINT from the terminal and then SIGTERM from its parent, which stops its helpers; a second signal would cut the
    helper's clean-up short. A helper that does not end in time is killed by its parent (or lifecycle.py)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
