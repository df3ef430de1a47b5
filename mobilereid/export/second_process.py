"""Export one model's targets in two processes side by side when a second core is free.

Why: the converters are mostly single-threaded Python (ExecuTorch's XNNPACK lowering, onnx2tf and the TFLite
converter), so one export of several targets keeps one core busy. ExecuTorch is the longest target of every model
(about two thirds of an export), and the TFLite family
(tflite, edgetpu, tflm: one onnx2tf SavedModel per export, shared) is most of the rest, so those two run in two
processes when the caller says a core is free: from the start (`mobilereid export --processes 2`) or as soon as
one frees up (the pipeline asks its core share between the chains, cores.py, every 2 s).

Measured: docs/results/2026-12-01-make-run.md (the SCL-net export stage about 1.5x faster in two processes).

The second process is started with `spawn` (a fork of a process whose torch and OpenMP threads are running is not
safe), loads the checkpoint and the calibration/verification images itself (the same files, the same order) and
exports its unit with the same code; results come back through a pipe. Each process writes only its own
artifacts; an error or a signal in either stops both, and each removes its own temporary files (SIGTERM unwinds
like Ctrl-C in the second process too). The second process dies with the first, even when that one is killed with
SIGKILL (lifecycle.py); it is stopped before the thread that may have started it (the core watcher) ends, because
the kernel's parent-death signal follows the starting thread.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from ..errors import ExportError, MobileReIDError

SHARED_WORK = ("tflite", "edgetpu", "tflm")  # one onnx2tf SavedModel per process (ExportJob.saved_model)
COST_ORDER = ("executorch", "tflite", "edgetpu", "tflm", "onnx")  # longest first (measured, module docstring)
NOT_WORTH_A_PROCESS = ("onnx",)  # ~4 s: less than starting a process, loading torch and the images
POLL_SECONDS = 2.0


def work_units(targets: list[str]) -> list[list[str]]:
    """Targets grouped so that targets sharing work stay in one process, longest unit first."""
    family = [t for t in targets if t in SHARED_WORK]
    units = [[t] for t in targets if t not in SHARED_WORK] + ([family] if family else [])
    cost = {t: i for i, t in enumerate(COST_ORDER)}  # a target not ranked yet goes last
    return sorted(units, key=lambda u: min(cost.get(t, len(cost)) for t in u))


class SecondProcess:
    """One spawned export of some targets; ``result()`` waits for its artifacts or raises its error."""

    def __init__(self, targets: list[str], kwargs: dict):
        import multiprocessing

        self.targets = targets
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_export_in_child,
            args=(send, {**kwargs, "target": ",".join(targets)}, os.getpid()),
            name=f"export-{'-'.join(targets)}",
        )
        self._process.start()
        send.close()

    def result(self) -> list[dict]:
        try:
            kind, payload = self._receive.recv()
        except EOFError:  # the process died without a word (killed, out of memory)
            self._process.join()
            raise ExportError(
                f"the second export process ({', '.join(self.targets)}) ended with exit status "
                f"{self._process.exitcode} before sending its artifacts"
            ) from None
        self._process.join()
        if kind == "ok":
            return payload
        if kind == "error":
            raise ExportError(payload)
        raise RuntimeError(f"second export process ({', '.join(self.targets)}): {payload}")

    def stop(self) -> None:
        """SIGTERM (the child unwinds and removes its temporary files), then SIGKILL if it does not end."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._receive.close()


def run_units(
    units: list[list[str]],
    run_here: Callable[[list[str]], list[dict]],
    kwargs: dict,
    core_free: Callable[[], bool],
    on_result=None,
) -> list[dict]:
    """Run ``units`` one after the other here, except the first pending unit worth a process, which goes to a second
    process as soon as ``core_free()`` says so (checked now and every POLL_SECONDS while this process works).
    ``kwargs``: export_checkpoint's arguments for the second process. Returns every result, in no particular order."""
    pending = deque(units)
    lock = threading.Lock()
    helper: list[SecondProcess] = []
    done = threading.Event()
    closing = threading.Event()

    def maybe_start() -> None:
        with lock:
            if helper or closing.is_set():
                return
            unit = next((u for u in pending if any(t not in NOT_WORTH_A_PROCESS for t in u)), None)
            if unit is None or not _ask(core_free):
                return
            pending.remove(unit)
            helper.append(SecondProcess(unit, kwargs))

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            maybe_start()

    results: list[dict] = []
    maybe_start()
    watcher = threading.Thread(target=watch, name="export-core-watch", daemon=True)
    watcher.start()
    try:
        while True:
            with lock:
                unit = pending.popleft() if pending else None
            if unit is None:
                break
            results.extend(run_here(unit))
        if helper:  # nothing is pending any more, so the watcher starts nothing from here on
            extra = helper[0].result()
            for r in extra:
                if on_result:
                    on_result(r)
            results.extend(extra)
        return results
    finally:
        with lock:  # from here on the watcher starts nothing
            closing.set()
        for h in helper:  # before the watcher ends: a helper it started gets SIGTERM from the kernel when it ends
            h.stop()
        done.set()
        watcher.join()


def _ask(core_free: Callable[[], bool]) -> bool:
    try:
        return bool(core_free())
    except Exception:  # the pipeline's parent is gone (interrupted): no second process
        return False


def _export_in_child(send, kwargs: dict, parent: int) -> None:
    """Entry of the second process: dies with its parent, quiet like the command that started it, one torch thread
    (the other core runs the first process), SIGTERM unwinds so temporary files go, errors go back through the pipe."""
    from ..chatter import silence_libraries
    from ..lifecycle import die_with_parent

    die_with_parent(parent)
    silence_libraries()
    import torch

    torch.set_num_threads(1)
    from . import export_checkpoint

    try:
        send.send(("ok", export_checkpoint(**kwargs)))
    except MobileReIDError as exc:
        send.send(("error", str(exc)))
    except Exception as exc:  # a bug: its traceback as text, so the first process can show it
        import traceback

        send.send(("bug", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        send.close()
