"""Small helpers shared by tests (kept out of conftest so they can be imported by name)."""

from scripts.network import Skip96VAE


def tiny_net(**kwargs) -> Skip96VAE:
    return Skip96VAE(channels=(8, 8, 16, 16, 16, 16), latent_channels=8, **kwargs)


def write_datalist(path, slides, key: str = "training"):
    """A MONAI-style JSON datalist of slide paths."""
    import json

    path.write_text(json.dumps({key: [{"image": str(s)} for s in slides]}))
    return path


def write_flat_tiff(path, side: int):
    """A one-level tiled JPEG TIFF of ``side`` x ``side`` pale pixels at 0.25 µm/px, written tile by tile."""
    import numpy as np
    import tifffile

    tile = np.full((256, 256, 3), 240, np.uint8)
    tifffile.imwrite(path, (tile for _ in range(((side + 255) // 256) ** 2)), shape=(side, side, 3), dtype=np.uint8,
                     tile=(256, 256), photometric="rgb", compression="jpeg", resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    return path
