"""The per-slide images: the heatmap (z-scores over the slide thumbnail, tissue only, the called regions outlined,
with a colour bar, a scale bar and a legend), the
thumbnail (JPEG: a photograph, far cheaper to encode than a PNG) and the tissue mask (PNG).

They are written in a thread beside the scoring of the next slide, so the figure is drawn on matplotlib's
object-oriented ``Figure`` (no pyplot: its global figure registry is not thread-safe).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image
from skimage.morphology import binary_dilation
from skimage.segmentation import find_boundaries

from .atomic import atomic_path
from .regions import cells_on_image
from .tiling import PatchGeometry

FIGURE_WIDTH_PX = 1000
# zlib's fastest level: a CAMELYON16 thumbnail takes a quarter of the default's time, for files a few per cent larger
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90
# Colour-blind-safe: z on cividis (blue to yellow, read alike by the common colour-vision deficiencies), outlines in
# Okabe and Ito's vermillion, which stands apart from every cividis colour
Z_COLOURS = "cividis"
CALLED_COLOUR = (0.835, 0.369, 0.0, 1.0)  # #D55E00
SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def save_image(path: str | Path, image: np.ndarray) -> None:
    """An RGB or grey uint8 image as a PNG or JPEG file (by the suffix), written atomically."""
    options = {"compress_level": PNG_COMPRESS_LEVEL} if Path(path).suffix == ".png" else {"quality": JPEG_QUALITY}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[Path(path).suffix], **options)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` on its boundary, ``width`` pixels deep: what the overlay draws around a called region."""
    edge = find_boundaries(np.pad(mask, 1), mode="inner")[1:-1, 1:-1]  # padded: a region at the image's edge is closed
    return binary_dilation(edge, footprint=np.ones((2 * width - 1,) * 2, bool)) & mask if width > 1 else edge


def scale_bar_mm(width_px: int, px_mm: float) -> float:
    """The longest round length (mm) within a fifth of an image ``width_px`` pixels wide at ``px_mm`` pixels a mm."""
    fitting = [mm for mm in SCALE_BAR_MM if mm * px_mm <= width_px / 5]
    return fitting[-1] if fitting else SCALE_BAR_MM[0]


def save_heatmap(
    path: str | Path,
    thumbnail: np.ndarray,
    thumbnail_downsample: float,
    z_map: np.ndarray,
    geometry: PatchGeometry,
    z_threshold: float,
    called: np.ndarray,
    title: str,
) -> None:
    """Draw ``z_map`` (NaN off tissue, transparent) at its true place over ``thumbnail``, the ``called`` cells
    outlined, with a scale bar in mm and a legend of the colours."""
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
    shown = (0, whole.shape[1], whole.shape[0], 0)
    axis.imshow(small, extent=shown)
    limit = max(3.0, z_threshold + 1.0)
    overlay = axis.imshow(
        np.ma.masked_invalid(z_map), cmap=Z_COLOURS, vmin=-limit, vmax=limit, alpha=0.6, extent=extent,
        interpolation="nearest",
    )  # fmt: skip
    # the outline at the drawn resolution, so that shrinking the image does not thin it away
    region = cells_on_image(called, small.shape[:2], thumbnail_downsample * factor, geometry.stride0)
    edge = np.zeros((*small.shape[:2], 4))
    edge[outline(region, width=2)] = CALLED_COLOUR
    axis.imshow(edge, extent=shown, interpolation="nearest")
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_axis_off()
    axis.set_title(title, fontsize=10)
    px_mm = 1000 / (geometry.mpp0 * thumbnail_downsample)
    mm = scale_bar_mm(width, px_mm)
    axis.add_artist(AnchoredSizeBar(axis.transData, mm * px_mm, f"{mm:g} mm", "lower left", frameon=True, pad=0.4,
                                    size_vertical=max(1.0, height / 150)))  # fmt: skip
    axis.legend(handles=[Patch(facecolor="none", edgecolor=CALLED_COLOUR, linewidth=2, label="called region")],
                loc="upper right", fontsize=8)  # fmt: skip
    bar = figure.colorbar(overlay, cax=axis.inset_axes([1.015, 0, 0.02, 1]))  # as tall as the image
    bar.set_label(f"per-slide z-score (called above {z_threshold:.2f})")
    bar.ax.axhline(z_threshold, color=CALLED_COLOUR, linewidth=1.5)
    figure.subplots_adjust(left=0.01, right=0.91, bottom=0.01, top=0.95)  # fixed: tight_layout draws it twice
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
