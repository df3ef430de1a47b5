"""Running another program for a command (ssh, scp, adb, the evaluator, debootstrap, chroot): its stdout, or one
line saying what failed. The line is the program's own ``error:`` line when it printed one (the evaluator's names
the file), else its last line on stderr (stdout when stderr is empty)."""

from __future__ import annotations

import subprocess

from .errors import MobileReIDError


def run_program(cmd: list[str], what: str, error: type[MobileReIDError] = MobileReIDError, timeout: int = 3600,
                env: dict | None = None, max_chars: int | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise error(f"{what}: '{cmd[0]}' is not installed") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what}: timed out after {timeout} s") from None
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()]
        errs = [l[len("error:"):].strip() for l in lines if l.startswith("error:")]
        line = (errs or lines or ["exit status " + str(proc.returncode)])[-1]
        raise error(f"{what}: {line[:max_chars] if max_chars else line}")
    return proc.stdout
