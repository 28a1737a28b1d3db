"""Run inference in-process under injected faults, for tests/test_faults.py (a script: ``python fault_runner.py``).

An audit hook (``sys.addaudithook``) sees every file the run opens for writing, renames, removes or creates under the
output folder, before it happens, whichever library does it (pandas, numpy, Pillow, matplotlib, shutil). The steps of
one call run in order in one process (imports paid once):

- ``run``: score into ``output_dir``; ``no_space_in``, if given, makes creating or writing any file or folder whose
  path contains it raise "No space left on device" (renames and removals still work, as on a full disk).
- ``copy``: copy folder ``source`` to ``output_dir``.
- ``kill``: for N = 1, 2, ... a forked child copies ``pristine`` to ``states/N`` and scores into it, and is killed
  (SIGKILL) at its N-th write; the loop ends at the first N the run outlives, and prints ``{"points": N}``. Run it
  after a ``run`` step, so that each child starts warm (lazy imports done) and costs what a slide costs; the
  process is single-threaded (OMP_NUM_THREADS=1), so no thread pool is forked mid-flight.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from monai.bundle import run

WRITE_EVENTS = ("os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT
on_write: Callable[[str, str], None] | None = None  # the fault of the step now running


def is_write(event: str, args: tuple) -> bool:
    if event == "open":
        _, mode, flags = args
        return bool(mode and set(str(mode)) & set("wax+")) or bool(isinstance(flags, int) and flags & WRITE_FLAGS)
    return event in WRITE_EVENTS


def audit(event: str, args: tuple) -> None:
    if on_write is None or not (event == "open" or event in WRITE_EVENTS) or not args:
        return
    if isinstance(args[0], str | bytes | os.PathLike) and is_write(event, args):
        on_write(event, os.path.abspath(os.fsdecode(args[0])))


def score(step: dict, settings: dict, output_dir: Path, fault: Callable[[str, str], None] | None = None) -> None:
    global on_write
    on_write = fault
    try:
        run(config_file=settings["config_file"], output_dir=str(output_dir), **settings[step["settings"]])
    finally:
        on_write = None


def full_disk(folder: str) -> Callable[[str, str], None]:
    def no_space(event: str, path: str) -> None:
        if event in ("open", "os.mkdir") and folder in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    return no_space


def kill_at(n: int, folder: Path) -> Callable[[str, str], None]:
    count = 0

    def kill(event: str, path: str) -> None:
        nonlocal count
        if path.startswith(str(folder)):
            count += 1
            if count == n:
                os.kill(os.getpid(), signal.SIGKILL)

    return kill


def kill_at_every_write(step: dict, settings: dict) -> int:
    states = Path(step["states"])
    for n in range(1, 1000):
        state = (states / str(n)).resolve()
        shutil.copytree(step["pristine"], state)
        pid = os.fork()
        if pid == 0:
            score(step, settings, state, kill_at(n, state))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if not os.WIFSIGNALED(status):
            if os.WEXITSTATUS(status) != 0:
                raise SystemExit(f"the run killed at write {n} exited {os.WEXITSTATUS(status)} instead")
            return n  # outlived: state n is the finished run
    raise SystemExit("the run did not finish within 1000 writes")


if __name__ == "__main__":
    task = json.loads(sys.argv[1])
    sys.addaudithook(audit)
    for step in task["steps"]:
        if step["do"] == "run":
            no_space_in = step.get("no_space_in")
            score(step, task, Path(step["output_dir"]).resolve(), full_disk(no_space_in) if no_space_in else None)
        elif step["do"] == "copy":
            shutil.copytree(step["source"], step["output_dir"])
        else:
            print(json.dumps({"points": kill_at_every_write(step, task)}))
