"""Writing files without ever losing the user's: atomic writes, scratch folders, ownership marks, staged reports.

* ``atomic_write_bytes/text``: a temporary sibling, then a rename; the whole new file or the old state. A full
  disk, an exceeded quota or a read-only folder is one line naming the file (`WriteError`), not an ``OSError:
  [Errno 28]`` without a path at the end of a long traceback.
* ``Workdir``: a scratch folder beside the output, removed whatever happens (and swept by the next run under the
  output folder's lock when a SIGKILL left it: export/run.py).
* Ownership marks: a folder mobilereid made holds a mark file; only such folders are ever deleted or replaced
  (a pipeline stage folder: ``STAGE_MARK``; a report folder: ``OUTPUT_MARK``, which in an output folder itself lists
  the files reports wrote there, so a user's own ``report.md`` beside ours is never overwritten).
* ``staged_folder``: a report is built in a temporary folder and moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import MobileReIDError, write_failure
from .fsmodes import as_created_dir, as_created_file

STAGE_MARK = ".mobilereid-stage"  # in every stage folder the pipeline creates (pipeline.Stage)
SCRATCH_MARK = ".mobilereid-scratch"  # in every scratch folder Workdir creates


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


class Workdir:
    """A temporary folder beside the output that is removed whatever happens; it holds ``SCRATCH_MARK``, so that a
    later run may sweep it after a SIGKILL (`stale_scratch_folders`) and never a user's folder of a similar name."""

    def __init__(self, out_dir: Path, name: str):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
        (self.path / SCRATCH_MARK).write_text("scratch folder of mobilereid; removed when its command ends\n")

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def stale_scratch_folders(out_dir: Path, name: str) -> list[Path]:
    """The scratch folders ``Workdir(out_dir, name)`` made and left (a SIGKILL cannot remove them): real folders of its
    name pattern holding its mark. The caller removes them while it holds the folder's lock (no run is using them)."""
    return [p for p in out_dir.glob(f".{name}.*") if p.is_dir() and not p.is_symlink() and (p / SCRATCH_MARK).is_file()]


OUTPUT_MARK = ".mobilereid-output"  # inside every folder a report writes, so only those are ever replaced
# in an output folder itself, OUTPUT_MARK lists the files reports wrote there (JSON: {"files": [...]}): only those
# are ever overwritten, so a user's own report.md beside ours is safe


def refuse_foreign_folder(dest: Path) -> None:
    """A report may replace a folder only if a report of ours wrote it (it holds OUTPUT_MARK)."""
    if dest.is_dir() and not (dest / OUTPUT_MARK).is_file():
        raise MobileReIDError(
            f"{dest}: exists and was not written by mobilereid; refusing to replace it (choose another output folder)"
        )


def files_written_by_us(out: Path) -> set[str]:
    try:
        files = json.loads((out / OUTPUT_MARK).read_text()).get("files", [])
        return {f for f in files if isinstance(f, str)}
    except (OSError, ValueError, AttributeError):
        return set()


def refuse_foreign_files(out: Path, names, force: bool = False) -> None:
    """Each of ``names`` in ``out`` is absent, or a file a report of ours wrote there, or a folder of ours;
    ``force`` lets files be overwritten (folders of someone else's are still never deleted)."""
    ours = files_written_by_us(out)
    for name in names:
        dest = out / name
        if dest.is_dir() and not dest.is_symlink():
            refuse_foreign_folder(dest)
        elif (dest.exists() or dest.is_symlink()) and name not in ours and not force:
            raise MobileReIDError(
                f"{dest}: exists and was not written by mobilereid; refusing to overwrite it "
                "(move it away, choose another output folder, or pass --force)"
            )


@contextlib.contextmanager
def staged_folder(out: Path, force: bool = False):
    """A temporary folder beside `out`; when the block succeeds its files replace those in `out`, so a failure
    leaves no partial report. Only files and folders a report of ours wrote are replaced (refuse_foreign_files)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        for item in stage.rglob("*"):  # files made by mkstemp-based helpers and mkdtemp folders: umask modes
            as_created_dir(item) if item.is_dir() else as_created_file(item)
        names = sorted(item.name for item in stage.iterdir())
        refuse_foreign_files(out, names, force)
        out.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():
            if item.is_dir():
                (item / OUTPUT_MARK).write_text("written by mobilereid; a later report replaces this folder\n")
        manifest = out / f".{OUTPUT_MARK}.tmp{os.getpid()}"
        manifest.write_text(
            json.dumps({"written_by": "mobilereid", "files": sorted(files_written_by_us(out) | set(names))})
        )
        as_created_file(manifest)
        os.replace(manifest, out / OUTPUT_MARK)  # first: a file moved in below is then always listed
        for item in stage.iterdir():
            dest = out / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)  # a folder an earlier report of ours wrote (it holds OUTPUT_MARK)
            os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
