"""Run slide-reader code in a child process, so that a reader crashing natively on one file costs that file only.

cuCIM and OpenSlide are C++/C libraries: a corrupt or unusual file can end the process with a signal (a flat
20k x 20k TIFF made cuCIM segfault) that no ``except`` catches, and the rest of the cohort would be lost with it.
The child is forked, so it starts at once with everything already imported, and it stays for the next call: a cohort
forks once, not once a slide, since forking a process holding a model is not free. Each call's result or exception
comes back through a pipe; the child's death by a signal becomes an ordinary exception here, and the next call forks
a new one.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Preparing a slide reads a header, a thumbnail and 64 patches: seconds even for a large slide on slow storage. A child
# still silent after this is stuck (a reader blocked for good, or a lock inherited through fork), not working.
ANSWER_TIMEOUT_S = 900
CLOSE_WAIT_S = 2.0


class ReaderCrashError(RuntimeError):
    """The child process died without answering (a native crash, or killed)."""


def _serve(requests, answers, parent_ends: tuple, function: Callable[..., Any]) -> None:
    """The child: answer each request with ``(True, result)`` or ``(False, (error, traceback))`` until the parent
    closes its end."""
    for end in parent_ends:  # inherited by the fork: holding the parent's write end, the child would never read EOF
        end.close()
    while True:
        try:
            args = requests.recv()
        except EOFError:  # the parent is done, or died
            return
        try:
            result = (True, function(*args))
        except Exception as error:  # everything goes back to the parent, which decides
            result = (False, (error, traceback.format_exc()))
        try:
            answers.send(result)
        except (BrokenPipeError, ConnectionResetError):  # the parent died: nobody is waiting
            return
        except Exception as error:  # an exception that cannot be pickled still gets its message across
            answers.send((False, (RuntimeError(str(result[1][0]) if not result[0] else str(error)), "")))


class IsolatedWorker(Generic[T]):
    """``function`` run in a forked child that is kept between calls; use it as a context manager (or ``close`` it).

    A call returns ``function(*args)``, raises its exception here, or raises ``ReaderCrashError`` when the child dies
    or stays silent past ``timeout``; after that the next call starts a new child.
    """

    def __init__(self, function: Callable[..., T], timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.function = function
        self.timeout = timeout
        self._child = None

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        child_requests, self._requests = context.Pipe(duplex=False)
        self._answers, child_answers = context.Pipe(duplex=False)
        parent_ends = (self._requests, self._answers)
        process = context.Process(
            target=_serve, args=(child_requests, child_answers, parent_ends, self.function), daemon=True
        )
        process.start()
        # the child's ends go here, so that a dead child reads as EOF, and a dead parent as EOF in the child
        child_requests.close()
        child_answers.close()
        self._child = process

    def __call__(self, *args: Any) -> T:
        if self._child is None:
            self._start()
        try:
            self._requests.send(args)
            if not self._answers.poll(self.timeout):
                self.close(kill=True)
                raise ReaderCrashError(f"the slide reader did not answer within {self.timeout:g} s and was stopped")
            ok, value = self._answers.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            code = self.close(kill=True)
            cause = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            raise ReaderCrashError(
                f"the slide reader crashed ({cause}); the file may be corrupt or in a layout the reader cannot handle: "
                "try --wsi_reader OpenSlide or tifffile, or convert it to a tiled pyramidal TIFF"
            ) from None
        if ok:
            return value
        error, child_traceback = value
        logger.debug("child process traceback:\n%s", child_traceback)
        raise error

    def close(self, kill: bool = False) -> int | None:
        """End the child (at once with ``kill``); its exit code, or None when there was none."""
        if self._child is None:
            return None
        process, self._child = self._child, None
        self._requests.close()  # a waiting child reads EOF and returns
        if not kill:
            # a process forked from this one meanwhile (a DataLoader worker) holds a copy of the write end, so EOF
            # may never come: the idle child is then stopped
            process.join(CLOSE_WAIT_S)
        if process.is_alive():
            process.kill()
        process.join()
        self._answers.close()
        return process.exitcode

    def __enter__(self) -> IsolatedWorker[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
