"""One mobilereid run per folder: an advisory lock (`flock`) on a lock file inside the folder, held for the run.

Why: two `pipeline` runs on one work folder deleted each other's stage folders (one died with a ~180-line
traceback), and two exports into one output folder overwrite each other's artifacts. Now the second run stops at
once with one line naming the holder's pid. The kernel drops the lock when its holder dies, even by SIGKILL, so a
crashed run never leaves a folder locked; the lock file (the holder's pid) is removed when the lock is released.
An export's output folder holds artifacts only, so there the folder itself is locked (`in_file=False`): no file,
no pid in the message.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import MobileReIDError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

LOCK_NAME = ".mobilereid.lock"


class FolderInUseError(MobileReIDError):
    """Another mobilereid run holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder", in_file: bool = True):
    """Hold ``folder``'s lock (the folder is made if missing) or raise FolderInUseError at once. ``what`` names the
    folder in the error: "work folder", "output folder". ``in_file``: lock LOCK_NAME inside it (which names the
    holder's pid), or the folder itself."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:
        fd = None
    elif in_file:
        fd = _acquire(path, folder, what)
    else:
        fd = _lock_folder(folder, what)
    try:
        yield
    finally:
        if fd is not None and in_file:
            try:
                path.unlink()  # while still holding it: a run waiting on this file sees it gone and retries (_acquire)
            except OSError:
                pass
            os.close(fd)
        elif fd is not None:
            os.close(fd)


def _lock_folder(folder: Path, what: str) -> int | None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUseError(f"{folder}: another mobilereid run is using this {what}") from None
    except OSError:  # a file system without flock: run unlocked, as before
        os.close(fd)
        return None
    return fd


def _acquire(path: Path, folder: Path, what: str) -> int | None:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{folder}: another mobilereid run is using this {what} (pid {holder})") from None
        except OSError:  # a file system without flock (some network mounts): run unlocked, as before
            os.close(fd)
            return None
        try:
            mine = os.stat(path)
            same = (mine.st_ino, mine.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one


def _holder(fd: int) -> str:
    for _ in range(20):  # the holder writes its pid right after locking
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"
