"""What every benchmark shares: batches as the loader makes them, and one line naming the machine.

The bundle's ``scripts`` package is imported as installed by ``make venv`` (editable), with no path set up here.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
DEMO_SLIDE = BUNDLE / "sample_data" / "camelyon16_demo.tif"


def demo_mosaic(path: Path) -> Path:
    """A 4x larger slide of held-out real tissue: the demo slide's level 0 and its three mirror images, 2 x 2 (~880
    tissue patches, 8.4 Mpx at level 0: a slide whose fixed costs weigh on its scoring)."""
    import tifffile

    from scripts.pyramid import write_pyramid

    image = tifffile.imread(DEMO_SLIDE, level=0)
    top, bottom = np.hstack([image, image[:, ::-1]]), np.hstack([image[::-1], image[::-1, ::-1]])
    return write_pyramid(path, np.vstack([top, bottom]), 0.972, levels=3, compression="jpeg")


def as_batch(patches: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 patches as the B x 3 x H x W uint8 batch the DataLoader hands ``prepare_batch``."""
    return torch.from_numpy(np.moveaxis(np.stack(patches), -1, 1).copy())


def machine() -> str:
    """One line naming the host, the device, torch and its thread count: every table starts with it."""
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{platform.node()} · {device} · torch {torch.__version__} · {threads} threads"


def flag_overrides(args, names: tuple[str, ...]) -> dict[str, bool]:
    """The 0/1 command-line flags among ``names`` that were given, as config booleans (absent: the config's)."""
    return {name: bool(getattr(args, name)) for name in names if getattr(args, name) is not None}


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer read next covers it (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA as MONAI's engines run it with ``amp: true``; nothing on the CPU or when disabled."""
    return torch.autocast("cuda") if enabled and device.type == "cuda" else contextlib.nullcontext()
