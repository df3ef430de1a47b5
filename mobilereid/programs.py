"""Running another program for a command (ssh, scp, adb, the evaluator, debootstrap, chroot): its stdout, or one
line saying what failed. The line is the program's own ``error:`` line when it printed one (the evaluator's names
the file), else its last line on stderr (stdout when stderr is empty). A program killed by a signal (a runtime's
abort or segfault) is said to have crashed, with the signal: whatever it printed last is unrelated to its death
(runtime chatter, a progress line)."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable

from .errors import MobileReIDError


def signal_name(number: int) -> str:
    """``SIGSEGV (Segmentation fault)``; the bare number for one Python does not know."""
    try:
        return f"{signal.Signals(number).name} ({signal.strsignal(number)})"
    except ValueError:
        return f"{number}"


def run_program(
    cmd: list[str],
    what: str,
    error: type[MobileReIDError] = MobileReIDError,
    timeout: int = 3600,
    env: dict | None = None,
    max_chars: int | None = None,
    marker: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> str:
    """``marker``: how the lines start that the program prints on stderr as it begins each step (the evaluator's
    ``evaluating PATH``); each is passed to ``on_step`` as it comes (progress for the user), and when the program dies
    without an ``error:`` line of its own, the last of them says during what."""
    try:
        proc = _run_streaming(cmd, env, timeout, marker, on_step)
    except FileNotFoundError:
        raise error(f"{what}: '{cmd[0]}' is not installed") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: timed out after {timeout} s") from None
    if proc.returncode != 0:
        step = lambda l: bool(marker) and l.startswith(marker)  # noqa: E731
        steps = [l.strip() for l in (proc.stderr or "").splitlines() if step(l)]
        during = f" while {steps[-1]}" if steps else ""
        said = lambda text: [l for l in (text or "").splitlines() if l.strip() and not step(l)]  # noqa: E731
        lines = said(proc.stderr) or said(proc.stdout)
        errs = [l[len("error:") :].strip() for l in lines if l.startswith("error:")]
        # faulthandler's line: a crash behind a shell or ssh, which turn the signal into an exit status
        fatal = [l.strip() for l in lines if l.startswith("Fatal Python error:")]
        if proc.returncode < 0:
            line = f"crashed with signal {signal_name(-proc.returncode)}{during}"
        elif errs:
            line = errs[-1]
        else:
            line = (fatal or lines or ["exit status " + str(proc.returncode)])[-1] + during
        raise error(f"{what}: {line[:max_chars] if max_chars else line}")
    return proc.stdout


def _run_streaming(cmd, env, timeout: int, marker: str | None, on_step) -> subprocess.CompletedProcess:
    """``subprocess.run(capture_output=True, timeout=...)`` that also hands each ``marker`` line of stderr to
    ``on_step`` while the program runs (stdout is read by a thread, so neither pipe can fill up and stall it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    fired = []
    timer = threading.Timer(timeout, lambda: (fired.append(True), proc.kill()))
    timer.start()
    err = []
    try:
        for line in proc.stderr:
            err.append(line)
            if on_step and marker and line.startswith(marker):
                on_step(line.strip())
        proc.wait()
        reader.join()
    finally:
        timer.cancel()
        if proc.poll() is None:  # an exception here (Ctrl-C): the program does not outlive the command
            proc.kill()
            proc.wait()
    if fired:
        raise subprocess.TimeoutExpired(cmd, timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err))
