"""A page opened in a real headless Chromium: what its console said, its DOM after the scripts ran, and a screenshot.

Chromium comes from the distribution's packages (``.ci/run`` installs it); tests that need it skip, with the reason,
where it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
NO_CHROMIUM = "no Chromium on this machine (CI installs Debian's chromium package in .ci/run)"
# Headless in a container: no sandbox (root), no GPU, no first-run chores
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--disable-extensions")
# Chromium logs each console message of the page as: ...:INFO:CONSOLE:12] "message", source: file:///... (12)
CONSOLE = re.compile(r":CONSOLE(?::\d+)?\] (.*)")


@dataclass(frozen=True)
class Opened:
    console: list[str]  # every console message, errors and uncaught exceptions among them
    dom: str  # the document after its scripts ran


def chromium(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, "--enable-logging=stderr", "--v=0", *arguments],
        capture_output=True, text=True, timeout=timeout, check=True,
    )  # fmt: skip


def open_page(page: Path) -> Opened:
    """Load ``page`` from its file, as a user opens it, and read back what the page printed and became."""
    result = chromium("--dump-dom", page.resolve().as_uri())
    return Opened(CONSOLE.findall(result.stderr), result.stdout)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1600) -> Path:
    """A ``width`` x ``height`` screenshot of ``page``'s top, as a browser window shows it."""
    chromium(f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri())
    return png
