"""Writes that leave either the whole new file or the old state: a temporary sibling, then a rename.

A full disk, an exceeded quota or a read-only folder fails such a write: the temporary file is removed and the
error is one line naming the file (`WriteError`), instead of an ``OSError: [Errno 28]`` without a path at the
end of a long traceback.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import write_failure
from .fsmodes import as_created_file


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    kept = "the existing file is unchanged" if path.exists() else "nothing was kept"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise (write_failure(path, exc, kept) or exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        as_created_file(tmp)  # mkstemp makes 0600: give the file the mode the user's umask asks for
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failed = write_failure(path, exc, kept) if isinstance(exc, OSError) else None
        if failed is None:
            raise
        raise failed from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
