"""What every benchmark shares: the bundle on ``sys.path`` (cuCIM's CPU-only import noise silenced) and the machine."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

import scripts  # noqa: E402, F401  (imported before MONAI: silences cuCIM's CPU-only import noise)


def as_batch(patches: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 patches as the B x 3 x H x W uint8 batch the DataLoader hands ``prepare_batch``."""
    return torch.from_numpy(np.moveaxis(np.stack(patches), -1, 1).copy())


def machine() -> str:
    """One line naming the host, the device, torch and its thread count: every table starts with it."""
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{platform.node()} · {device} · torch {torch.__version__} · {threads} threads"
