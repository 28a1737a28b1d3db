"""The per-slide images: the heatmap (z-scores over the slide thumbnail, tissue only, with a colour bar), the
thumbnail (JPEG: a photograph, far cheaper to encode than a PNG) and the tissue mask (PNG).

They are written in a thread beside the scoring of the next slide, so the figure is drawn on matplotlib's
object-oriented ``Figure`` (no pyplot: its global figure registry is not thread-safe).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from .atomic import atomic_path
from .tiling import PatchGeometry

FIGURE_WIDTH_PX = 1000
# zlib's fastest level: a CAMELYON16 thumbnail takes a quarter of the default's time, for files a few per cent larger
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90


def save_image(path: str | Path, image: np.ndarray) -> None:
    """An RGB or grey uint8 image as a PNG or JPEG file (by the suffix), written atomically."""
    options = {"compress_level": PNG_COMPRESS_LEVEL} if Path(path).suffix == ".png" else {"quality": JPEG_QUALITY}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[Path(path).suffix], **options)


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
    figure = Figure(figsize=(FIGURE_WIDTH_PX / 100, FIGURE_WIDTH_PX / 100 * height / max(width, 1) + 0.8), dpi=100)
    axis = figure.subplots()
    # The figure is FIGURE_WIDTH_PX wide, so matplotlib would shrink a larger thumbnail anyway, through float copies
    # of ~280 MB for a CAMELYON16-sized slide; block means of whole blocks first (a partial edge block would be
    # dark; the crop is under one figure pixel), in Pillow's C code.
    factor = max(1, width // FIGURE_WIDTH_PX)
    whole = thumbnail[: height - height % factor, : width - width % factor]
    small = np.asarray(Image.fromarray(np.ascontiguousarray(whole)).reduce(factor))
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
    bar = figure.colorbar(overlay, cax=axis.inset_axes([1.015, 0, 0.02, 1]))  # as tall as the image
    bar.set_label(f"per-slide z-score (tumour call above {z_threshold:.2f})")
    bar.ax.axhline(z_threshold, color="cyan", linewidth=1.5)
    figure.subplots_adjust(left=0.01, right=0.91, bottom=0.01, top=0.95)  # fixed: tight_layout draws it twice
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
