"""Errors this bundle raises on bad input reach the user as one line, not as MONAI's chain of wrapping tracebacks.

``monai.bundle run`` wraps an exception raised inside a config expression in several ``RuntimeError("Failed to
evaluate ...")`` layers, so "--stride must be an integer >= 1" would sit under 60 lines of traceback. When an
error of the chain was raised by this bundle's own code (a deliberate message naming the file or key and the fix),
only the innermost such message is printed, as is a full disk or a read-only folder wherever it is met; anything
else (a bug) keeps its full traceback. ``SKIP96_TRACEBACK=1`` shows it always.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import TracebackType

from .atomic import WRITE_FIXES, write_failure

SCRIPTS_DIR = str(Path(__file__).resolve().parent)


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it was raised from or during, outermost first."""
    chain = [error]
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
        chain.append(error)
    return chain


def raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by a line of ``bundle/scripts`` (its traceback's last frame is ours)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(SCRIPTS_DIR)


def reported(error: BaseException) -> BaseException:
    """The error a user is told of: ``error``, or where a MONAI ``Compose`` wrapped it in ``RuntimeError("applying
    transform <object at 0x...>")``, which names no cause, the error it wrapped."""
    while isinstance(error, RuntimeError) and str(error).startswith("applying transform") and error.__cause__:
        error = error.__cause__
    return error


def one_line_excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt) and not os.environ.get("SKIP96_TRACEBACK"):
        print("Interrupted: finished slides keep their outputs; the same command finishes the rest.", file=sys.stderr)
        return
    chain = causes(error)
    ours = [e for e in chain if isinstance(e, Exception) and raised_here(e)]
    machine_fault = isinstance(chain[-1], OSError) and chain[-1].errno in WRITE_FIXES  # a full disk, a read-only folder
    if os.environ.get("SKIP96_TRACEBACK") or not (ours or machine_fault):
        sys.__excepthook__(kind, error, tb)
        return
    if ours:
        print(f"ERROR: {type(ours[-1]).__name__}: {ours[-1]}", file=sys.stderr)
    else:
        print(f"ERROR: {chain[-1].filename or 'writing outputs'}: {write_failure(chain[-1])}", file=sys.stderr)
    print("(SKIP96_TRACEBACK=1 shows the full traceback)", file=sys.stderr)


def install() -> None:
    """The one-line error report for the command line; also silences the scikit-image deprecation that MONAI's FROC
    code triggers on every evaluation, a line no user can act on."""
    sys.excepthook = one_line_excepthook
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai.apps.pathology")
