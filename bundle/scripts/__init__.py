"""Skip96 beta-VAE anomaly bundle: the code the configs reference by ``_target_``.

Importing the package loads nvImageCodec (pulled in by cuCIM) with file descriptor 2 silenced: on machines without
CUDA its C code prints "Failed to load nvjpeg ..." lines that are harmless and would bury the bundle's own output.
It also makes the bundle's own input errors print as one line (``scripts.errors``).
"""

import contextlib
import os
from pathlib import Path

from .errors import install as install_one_line_errors

BUNDLE_ROOT = str(Path(__file__).resolve().parents[1])


def _import_nvimgcodec_quietly() -> None:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with contextlib.suppress(ImportError):
                import nvidia.nvimgcodec  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_import_nvimgcodec_quietly()

install_one_line_errors()
