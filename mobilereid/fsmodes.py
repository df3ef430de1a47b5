"""File modes that honour the user's umask.

`tempfile.mkstemp` creates files 0600 and `tempfile.mkdtemp` folders 0700 whatever the umask, because they are
meant to stay private. mobilereid writes its outputs through such temporary paths and renames them into place (so
nothing is ever half-written), so each one gets, before the rename, the mode an ordinary `open`/`mkdir` would have
given it: 0666 or 0777 minus the umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def current_umask() -> int:
    with _lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def as_created_file(path: str | Path) -> None:
    os.chmod(path, 0o666 & ~current_umask())


def as_created_dir(path: str | Path) -> None:
    os.chmod(path, 0o777 & ~current_umask())
