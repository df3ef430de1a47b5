"""SIGTERM unwinds like Ctrl-C, so every temporary folder and file is removed by the `finally` blocks that remove
them on SIGINT: installed by the CLI for each command and by the export's second process (export/second_process.py)."""

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
