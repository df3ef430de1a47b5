"""Third-party log chatter stays out of the user's way unless `--verbose` (environment MOBILEREID_VERBOSE=1).

An export used to print 10-15 lines nobody asked for: torchao's optional CUDA kernels, ExecuTorch's cpuinfo probe (C++
writes straight to file descriptor 2), TensorFlow's oneDNN/CUDA-stub notes (hidden by log level, nothing is switched
off), absl's pre-init warning and torch pytree deprecations. Python-level noise is filtered (warnings, library loggers);
native noise is cut at the file descriptor: fd 2 goes to /dev/null while Python's own `sys.stderr` (our progress lines,
one-line errors and any traceback of a real bug) keeps writing to the terminal through a duplicate of the original
descriptor.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ENV = "MOBILEREID_VERBOSE"


def verbose() -> bool:
    return os.environ.get(ENV) == "1"


def silence_libraries(python_stderr=None) -> None:
    """Call once, early, in a process (before TensorFlow or ExecuTorch are imported). ``python_stderr``: where
    Python's own stderr goes from now on (default: the terminal fd 2 pointed at, through a duplicate)."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "3")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # libraries (torch) reset their loggers' levels on import; this holds anyway
    if python_stderr is None:
        try:
            if sys.stderr.fileno() != 2:
                return
        except (AttributeError, OSError, ValueError):
            return  # stderr is already redirected by a caller (a test runner's capture): leave descriptors alone
    try:
        sys.stderr.flush()
        if python_stderr is None:
            python_stderr = os.fdopen(os.dup(2), "w", buffering=1)  # Python's stderr (ours) still reaches the terminal
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # native libraries' fd-2 writes vanish
        os.close(devnull)
        sys.stderr = python_stderr
    except OSError:
        pass
