"""Tissue detection on RGB images: HSV saturation with an Otsu threshold, holes filled, specks removed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology

# A field that is all tissue has no background mode, and Otsu would then split the tissue itself; stained tissue is
# well above this saturation, glass and white background well below (PCam's own filter used 0.07).
MAX_SATURATION_THRESHOLD = 0.1


def tissue_mask(
    rgb: np.ndarray, min_object_px: int = 64, max_threshold: float = MAX_SATURATION_THRESHOLD
) -> np.ndarray:
    """Boolean tissue mask of an HWC uint8 RGB image.

    Objects and holes smaller than ``min_object_px`` pixels are removed and filled, so isolated dust and small
    lumina inside tissue do not fragment the mask.
    """
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"tissue_mask needs an HWC RGB image, got shape {rgb.shape}.")
    saturation = color.rgb2hsv(rgb[..., :3])[..., 1]
    if np.ptp(saturation) < 1e-6:
        return np.zeros(saturation.shape, dtype=bool)
    threshold = min(float(filters.threshold_otsu(saturation)), max_threshold)
    mask = saturation > threshold
    mask = morphology.remove_small_objects(mask, max_size=min_object_px)
    return morphology.remove_small_holes(mask, max_size=min_object_px)


def window_fraction(mask: np.ndarray, window: int) -> np.ndarray:
    """Fraction of ``mask`` inside every ``window``x``window`` square, indexed by the square's top-left pixel."""
    counts = ndimage.uniform_filter(mask.astype(np.float32), size=window, mode="constant", origin=-(window // 2))
    valid = mask.shape[0] - window + 1, mask.shape[1] - window + 1
    return counts[: valid[0], : valid[1]]
