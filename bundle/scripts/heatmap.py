"""The per-slide heatmap image: z-scores over the slide thumbnail, tissue only, with a colour bar."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.transform import downscale_local_mean  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .wsi import PatchGeometry  # noqa: E402

FIGURE_WIDTH_PX = 1000


def save_heatmap(
    path: str | Path,
    thumbnail: np.ndarray,
    thumbnail_downsample: float,
    z_map: np.ndarray,
    geometry: PatchGeometry,
    z_threshold: float,
    title: str,
) -> None:
    """Draw ``z_map`` (NaN off tissue, transparent) at its true place over ``thumbnail``."""
    height, width = thumbnail.shape[:2]
    scale = geometry.stride0 / thumbnail_downsample  # grid cell pitch in thumbnail pixels
    extent = (0, z_map.shape[1] * scale, z_map.shape[0] * scale, 0)
    figure, axis = plt.subplots(
        figsize=(FIGURE_WIDTH_PX / 100, FIGURE_WIDTH_PX / 100 * height / max(width, 1) + 0.8), dpi=100
    )
    # The figure is FIGURE_WIDTH_PX wide, so matplotlib would shrink a larger thumbnail anyway, through float copies
    # of ~280 MB for a CAMELYON16-sized slide; block means of whole blocks first (a zero-padded edge block would be
    # dark; the crop is under one figure pixel) take 60 MB.
    factor = max(1, width // FIGURE_WIDTH_PX)
    whole = thumbnail[: height - height % factor, : width - width % factor]
    small = downscale_local_mean(whole, (factor, factor, 1)).astype(np.uint8)
    axis.imshow(small, extent=(0, whole.shape[1], whole.shape[0], 0))
    limit = max(3.0, z_threshold + 1.0)
    overlay = axis.imshow(
        np.ma.masked_invalid(z_map), cmap="inferno", vmin=-limit, vmax=limit, alpha=0.6, extent=extent,
        interpolation="nearest",
    )  # fmt: skip
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_axis_off()
    axis.set_title(title, fontsize=10)
    bar = figure.colorbar(overlay, ax=axis, fraction=0.035, pad=0.02)
    bar.set_label(f"per-slide z-score (tumour call above {z_threshold:.2f})")
    bar.ax.axhline(z_threshold, color="cyan", linewidth=1.5)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
