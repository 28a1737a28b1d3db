"""The per-slide images: the heatmap (z-scores over the slide thumbnail, tissue only, the called regions outlined,
with a colour bar, a scale bar and a legend), the
thumbnail (JPEG: a photograph, far cheaper to encode than a PNG) and the tissue mask (PNG).

They are written in a thread beside the scoring of the next slide, so the figure is drawn on matplotlib's
object-oriented ``Figure`` (no pyplot: its global figure registry is not thread-safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Polygon
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image
from skimage.morphology import dilation
from skimage.segmentation import find_boundaries

from .atomic import atomic_path
from .regions import cells_on_image

FIGURE_WIDTH_PX = 1000
# zlib's fastest level: a CAMELYON16 thumbnail takes a quarter of the default's time, for files a few per cent larger
PNG_COMPRESS_LEVEL = 1
JPEG_QUALITY = 90
# Colour-blind-safe: z on cividis (blue to yellow, read alike by the common colour-vision deficiencies), outlines in
# Okabe and Ito's vermillion, which stands apart from every cividis colour
Z_COLOURS = "cividis"
CALLED_COLOUR = (0.835, 0.369, 0.0, 1.0)  # #D55E00
# after evaluation: right calls bluish green, wrong ones vermillion, missed tumour sky blue, exclusions grey
CALL_COLOURS = {"TP": (0.0, 0.620, 0.451, 1.0), "FP": CALLED_COLOUR, "FN": (0.337, 0.706, 0.914, 1.0)}
ANNOTATION_COLOUR = (0.0, 0.0, 0.0, 1.0)
EXCLUSION_COLOUR = "#7F7F7F"
SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def save_image(path: str | Path, image: np.ndarray) -> None:
    """An RGB or grey uint8 image as a PNG or JPEG file (by the suffix), written atomically."""
    options = {"compress_level": PNG_COMPRESS_LEVEL} if Path(path).suffix == ".png" else {"quality": JPEG_QUALITY}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions()[Path(path).suffix], **options)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` on its boundary, ``width`` pixels deep: what the overlay draws around a called region."""
    edge = find_boundaries(np.pad(mask, 1), mode="inner")[1:-1, 1:-1]  # padded: a region at the image's edge is closed
    return dilation(edge, footprint=np.ones((2 * width - 1,) * 2, bool)) & mask if width > 1 else edge


def scale_bar_mm(width_px: int, px_mm: float) -> float:
    """The longest round length (mm) within a fifth of an image ``width_px`` pixels wide at ``px_mm`` pixels a mm."""
    fitting = [mm for mm in SCALE_BAR_MM if mm * px_mm <= width_px / 5]
    return fitting[-1] if fitting else SCALE_BAR_MM[0]


@dataclass(frozen=True)
class Outlined:
    """A mask drawn on the overlay as the outline of its regions, with its legend entry: a grid of cells or a raster,
    whose pixels are ``pixel0`` level-0 px."""

    mask: np.ndarray
    pixel0: float
    colour: tuple[float, float, float, float]
    label: str


def save_heatmap(
    path: str | Path,
    thumbnail: np.ndarray,
    thumbnail_downsample: float,
    z_map: np.ndarray,
    stride0: float,
    mpp0: float,
    z_threshold: float,
    outlined: Sequence[Outlined],
    title: str,
    exclusions: Sequence[np.ndarray] = (),
) -> None:
    """Draw ``z_map`` (NaN off tissue, transparent) at its true place over ``thumbnail``, each of ``outlined``
    outlined in its colour, the ``exclusions`` (level-0 polygons) hatched, with a scale bar in mm and a legend."""
    height, width = thumbnail.shape[:2]
    scale = stride0 / thumbnail_downsample  # grid cell pitch in thumbnail pixels
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
    # outlines at the drawn resolution, so that shrinking the image does not thin them away
    edges = np.zeros((*small.shape[:2], 4))
    for layer in outlined:
        drawn = cells_on_image(layer.mask, small.shape[:2], thumbnail_downsample * factor, layer.pixel0)
        edges[outline(drawn, width=2)] = layer.colour
    axis.imshow(edges, extent=shown, interpolation="nearest")
    for polygon in exclusions:
        axis.add_patch(Polygon(polygon / thumbnail_downsample, fill=False, hatch="///", edgecolor=EXCLUSION_COLOUR))
    axis.set_xlim(0, width)
    axis.set_ylim(height, 0)
    axis.set_axis_off()
    axis.set_title(title, fontsize=10)
    px_mm = 1000 / (mpp0 * thumbnail_downsample)
    mm = scale_bar_mm(width, px_mm)
    axis.add_artist(AnchoredSizeBar(axis.transData, mm * px_mm, f"{mm:g} mm", "lower left", frameon=True, pad=0.4,
                                    size_vertical=max(1.0, height / 150)))  # fmt: skip
    entries = [Patch(facecolor="none", edgecolor=layer.colour, linewidth=2, label=layer.label) for layer in outlined]
    if len(exclusions):
        entries.append(Patch(facecolor="none", edgecolor=EXCLUSION_COLOUR, hatch="///", label="exclusion"))
    axis.legend(handles=entries, loc="upper right", fontsize=8)
    bar = figure.colorbar(overlay, cax=axis.inset_axes([1.015, 0, 0.02, 1]))  # as tall as the image
    bar.set_label(f"per-slide z-score (called above {z_threshold:.2f})")
    bar.ax.axhline(z_threshold, color=CALLED_COLOUR, linewidth=1.5)
    figure.subplots_adjust(left=0.01, right=0.91, bottom=0.01, top=0.95)  # fixed: tight_layout draws it twice
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
