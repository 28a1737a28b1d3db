"""Safe outputs: files appear whole (temp file + rename), folders are replaced as one unit (a staged sibling swapped
in), and one run at a time writes an output folder (a lock)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Every temp file this bundle writes carries this tag, so a rerun removes its own leftovers and nothing of the user's.
TEMP_TAG = ".skip96-partial"
RETIRED_TAG = ".skip96-retired"
WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk and rerun (finished slides are skipped)",
    errno.EDQUOT: "free space within your disk quota and rerun (finished slides are skipped)",
    errno.EROFS: "the disk is read-only; pass another --output_dir",
    errno.EACCES: "make the folder writable or pass another --output_dir",
    errno.EPERM: "make the folder writable or pass another --output_dir",
}


class OutputWriteError(OSError):
    """Outputs could not be written (a full disk, no permission): the user's to fix, said in one line."""


def write_failure(error: OSError) -> str:
    """Why a write failed and what to do, in words (``[Errno 28] ... '/long/temp/path'`` says neither)."""
    fix = WRITE_FIXES.get(error.errno, "check that the folder is writable, or pass another --output_dir")
    return f"{error.strerror or error}; {fix}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path (same folder and suffix) to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TEMP_TAG}{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _staged(path: Path) -> tuple[Path, Path]:
    """The sibling a folder's new content is written into, and the name its old content moves to during the swap."""
    return path.with_name(f".{path.name}{TEMP_TAG}"), path.with_name(f".{path.name}{RETIRED_TAG}")


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; if the block succeeds it replaces ``path`` (and whatever was there).

    A folder cannot be renamed over a full one, so the swap is two renames (old content aside, new content in); a kill
    between them leaves both siblings, and ``recover_folder`` completes the swap. So a reader of ``path``, or a rerun
    after ``recover_folder``, always sees the old set of files or the new one, never a mix. A failed block (a full
    disk) removes what it wrote and leaves the old content untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not an output folder; move it away or pass another --output_dir.")
    staging, retired = _staged(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        os.rename(path, retired)
    os.rename(staging, path)
    shutil.rmtree(retired, ignore_errors=True)


def recover_folder(path: str | Path) -> None:
    """Finish an ``atomic_folder`` swap that a kill interrupted, and remove its leftovers.

    The old content is set aside only once the new content is whole, so a set-aside folder with ``path`` missing means
    the kill came between the two renames: the staged folder is moved in (the old one only if the staged one is gone
    too). A staged folder with nothing set aside may be half-written: it is removed.
    """
    path = Path(path)
    staging, retired = _staged(path)
    if not path.exists() and retired.is_dir():
        os.rename(staging if staging.is_dir() else retired, path)
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the temp files a killed run of this bundle left in ``folder`` (only those: by their tag)."""
    for stale in folder.glob(f".*{TEMP_TAG}*"):
        if stale.is_file():
            stale.unlink()


def require_output_folder(folder: str | Path) -> Path:
    """``folder``, refused in one line when it names a file (``mkdir`` would raise a bare ``FileExistsError``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--output_dir {folder} is a file, not a folder; pass a folder path.")
    return folder


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = ".skip96.lock") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while writing into it; a second run is refused at once, naming the first.

    Two runs writing one folder interleave their outputs (regions of one threshold, a completion marker of another),
    so the second stops instead of waiting: the user decides. The kernel drops the lock when a run dies, however.
    A POSIX record lock (``lockf``) belongs to this process alone: the children it forks (the slide preparer's,
    DataLoader workers) do not hold it, so one left running by a killed run cannot block the rerun.
    """
    folder = require_output_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    handle = open(path, "a+")  # noqa: SIM115  (held open for the lock's lifetime)
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: held
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(
                f"{folder} is being written by another run ({holder}); wait for it to finish or pass another "
                "--output_dir."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}")
        handle.flush()
        yield
    finally:
        handle.close()
