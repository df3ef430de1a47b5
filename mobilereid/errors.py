"""One error type for every problem a user can fix (bad paths, bad files, bad options).

The CLI prints such an error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class MobileReIDError(Exception):
    """A user-facing error: its message is one sentence naming the file or option and the problem."""


class DatasetError(MobileReIDError):
    """A dataset folder, file name or image that cannot be used."""


class CheckpointError(MobileReIDError):
    """A checkpoint that is missing, not a checkpoint, or does not fit the model it describes."""


class ExportError(MobileReIDError):
    """An export that cannot be done or whose artifact failed verification."""


class WriteError(MobileReIDError):
    """An output that could not be written: a full disk, an exceeded quota, a read-only or forbidden folder."""


# what the user can do something about, in the words `df`, `quota` and `ls -l` make them look for
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EFBIG: "file too large",
}


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself or one it was raised from or during (torch's writer wraps the OSError of a
    Python file object in a RuntimeError whose text names only its own source line)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _torch_writer_failure(exc: BaseException) -> bool:
    text = str(exc)
    marks = ("inline_container", "PytorchStreamWriter", "iostream error")
    return isinstance(exc, RuntimeError) and any(s in text for s in marks)


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def write_failure(path: str | Path, exc: BaseException, kept: str | None = None) -> WriteError | None:
    """The one-line error for a failed write of ``path`` (``exc`` an OSError, or torch's RuntimeError from a failed
    `torch.save`), or None when ``exc`` is no write failure. ``kept`` says what the failed write left behind
    (default: the file as it was before, or nothing); every caller writes to a temporary name it then removes."""
    path = Path(path)
    if kept is None:
        kept = "the existing file is unchanged" if path.exists() else "nothing was kept"
    if not isinstance(exc, OSError) and not _torch_writer_failure(exc):
        return None
    os_err = os_error_in(exc)
    if os_err is not None:
        reason = WRITE_ERRNOS.get(os_err.errno) or os_err.strerror or str(os_err) or type(os_err).__name__
    else:  # torch given a path: no errno survives its C++ stream, and a full disk is the usual cause
        reason = (
            "no space left on device"
            if _nearly_full(path.parent)
            else f"torch could not write it ({str(exc).splitlines()[0][:120]})"
        )
    return WriteError(f"{path}: {reason} (write failed; {kept})")
