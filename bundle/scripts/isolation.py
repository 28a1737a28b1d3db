"""Run slide-reader code in a child process, so that a reader crashing natively on one file costs that file only.

cuCIM and OpenSlide are C++/C libraries: a corrupt or unusual file can end the process with a signal (a flat
20k x 20k TIFF made cuCIM segfault) that no ``except`` catches, and the rest of the cohort would be lost with it.
The child is forked, so it starts at once with everything already imported; its result or its exception comes back
through a pipe, and its death by a signal becomes an ordinary exception here.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A probe reads a header, a thumbnail and 64 patches: seconds even for a large slide on slow storage. A child still
# silent after this is stuck (a reader blocked for good, or a lock inherited through fork), not working.
ANSWER_TIMEOUT_S = 900


class ReaderCrashError(RuntimeError):
    """The child process died without answering (a native crash, or killed)."""


def _child(receiver, sender, function: Callable[..., Any], args: tuple) -> None:
    # the child's copy of the read end must go: if the parent dies, a write then fails instead of blocking forever
    receiver.close()
    try:
        result = (True, function(*args))
    except Exception as error:  # everything goes back to the parent, which decides
        result = (False, (error, traceback.format_exc()))
    try:
        sender.send(result)
    except Exception as error:  # an exception that cannot be pickled still gets its message across
        sender.send((False, (RuntimeError(str(result[1][0]) if not result[0] else str(error)), "")))
    finally:
        sender.close()


def run_isolated(function: Callable[..., T], *args: Any, timeout: float = ANSWER_TIMEOUT_S) -> T:
    """``function(*args)`` in a forked child: its return value, or its exception raised here, or ReaderCrashError."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(receiver, sender, function, args), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            raise ReaderCrashError(f"the slide reader did not answer within {timeout:g} s and was stopped")
        ok, value = receiver.recv()
    except EOFError:
        process.join()
        code = process.exitcode
        cause = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        raise ReaderCrashError(
            f"the slide reader crashed ({cause}); the file may be corrupt or in a layout the reader cannot handle: "
            "try --wsi_reader OpenSlide or tifffile, or convert it to a tiled pyramidal TIFF"
        ) from None
    finally:
        receiver.close()
    process.join()
    if ok:
        return value
    error, child_traceback = value
    logger.debug("child process traceback:\n%s", child_traceback)
    raise error
