"""Safe outputs: files appear whole (temp file + rename) and one run at a time writes an output folder (a lock)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Every temp file this bundle writes carries this tag, so a rerun removes its own leftovers and nothing of the user's.
TEMP_TAG = ".skip96-partial"


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


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the temp files a killed run of this bundle left in ``folder`` (only those: by their tag)."""
    for stale in folder.glob(f".*{TEMP_TAG}*"):
        if stale.is_file():
            stale.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = ".skip96.lock") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while writing into it; a second run is refused at once, naming the first.

    Two runs writing one folder interleave their outputs (regions of one threshold, a completion marker of another),
    so the second stops instead of waiting: the user decides. The kernel drops the lock when a run dies, however.
    A POSIX record lock (``lockf``) belongs to this process alone: the children it forks (slide probes, DataLoader
    workers) do not hold it, so one left running by a killed run cannot block the rerun.
    """
    folder = Path(folder)
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
