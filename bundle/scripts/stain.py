"""H&E stain normalisation: Macenko fitted once per slide, applied to every patch as a linear map in optical density.

Fitting Macenko per patch (eigen-decomposition per 96-px patch) is slow and fails on white or pale patches; the stain
matrix and maximum concentrations of one slide are properties of the slide, so they are fitted once from a sample of
its tissue patches (with MONAI's ``ExtractHEStains``) and every patch is mapped with two small matrix products.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torchstain
from monai.apps.pathology.transforms import ExtractHEStains
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from skimage import color

logger = logging.getLogger(__name__)

STAIN_MODES = ("slide", "per_patch", "none")
# Macenko's reference stain matrix (columns H, E) and maximum concentrations, as in MONAI and torchstain.
REFERENCE_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REFERENCE_MAX_C = np.array([1.9705, 1.0308])
BACKGROUND_INTENSITY = 240.0
OD_THRESHOLD = 0.15
# Reinhard target (CIELAB mean and std) of the normal tissue of the first 24 CAMELYON16 development tiles
# (../shared/data/camelyon16_tiles, 96-px crops on a 48-px grid, 367 crops): the domain the model is trained on.
REINHARD_LAB_MEAN = np.array([53.04, 34.16, -9.23])
REINHARD_LAB_STD = np.array([19.15, 10.36, 9.82])


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(np.float64) + 1.0) / BACKGROUND_INTENSITY)


def reinhard(rgb: np.ndarray) -> np.ndarray:
    """Match CIELAB mean and std to the reference; the std is never amplified, so flat patches stay flat."""
    lab = color.rgb2lab(rgb)
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    scale = REINHARD_LAB_STD / np.maximum(std, REINHARD_LAB_STD)
    out = (lab - mean) * scale + REINHARD_LAB_MEAN
    return (color.lab2rgb(out) * 255).round().clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class MacenkoFit:
    """A slide's H&E absorbance matrix (3 x 2, columns H and E) and its 99th-percentile concentrations."""

    he: np.ndarray
    max_c: np.ndarray

    @classmethod
    def from_patches(cls, patches: Sequence[np.ndarray]) -> MacenkoFit:
        """Fit on the pooled pixels of HWC uint8 ``patches``; raises ``ValueError`` when they hold too little stain."""
        pixels = np.concatenate([np.asarray(p).reshape(-1, 3) for p in patches]).reshape(-1, 1, 3)
        he = ExtractHEStains(tli=BACKGROUND_INTENSITY, beta=OD_THRESHOLD)(pixels).astype(np.float64)
        concentrations = np.linalg.lstsq(he, optical_density(pixels.reshape(-1, 3)).T, rcond=None)[0]
        max_c = np.percentile(concentrations, 99, axis=1)
        if not np.all(np.isfinite(he)) or not np.all(max_c > 0):
            raise ValueError(f"degenerate stain fit (max concentrations {max_c})")
        return cls(he, max_c)

    @cached_property
    def _to_reference(self) -> np.ndarray:
        """Optical density to reference-scaled concentrations: the 2 x 3 least-squares pseudo-inverse of ``he``,
        scaled to the reference maxima. A property of the fit, so it is computed once, not per patch."""
        return np.linalg.pinv(self.he) * (REFERENCE_MAX_C / self.max_c)[:, None]

    def apply(self, rgb: np.ndarray, od: np.ndarray | None = None) -> np.ndarray:
        """Map an HWC uint8 patch; ``od`` is its optical density when the caller has computed it already."""
        od = optical_density(rgb.reshape(-1, 3)) if od is None else od
        out = BACKGROUND_INTENSITY * np.exp(-REFERENCE_HE @ (self._to_reference @ od.T))
        return out.T.reshape(rgb.shape).round().clip(0, 255).astype(np.uint8)


def is_degenerate(
    rgb: np.ndarray, od: np.ndarray | None = None, min_stained_fraction: float = 0.1, min_od_spread: float = 0.02
) -> bool:
    """White, blank, single-coloured or barely stained: too few pixels above the optical-density threshold in
    every channel, or no variation to find two stain directions in. ``od``: as in ``MacenkoFit.apply``."""
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        return True
    od = optical_density(rgb.reshape(-1, 3)) if od is None else od
    if od.std(axis=0).max() < min_od_spread:
        return True
    return bool(np.all(od > OD_THRESHOLD, axis=1).mean() < min_stained_fraction)


class StainNormalized(MapTransform):
    """Macenko normalisation of CHW uint8 patches; sets ``stain_fallback`` (0/1) in the data dict.

    Modes: ``slide`` applies the fit from ``fit_slide`` (call it before a slide's patches are loaded); ``per_patch``
    fits every patch with torchstain's Macenko (the slow reference behaviour); ``none`` passes patches through.
    Degenerate patches, a failed slide fit and any per-patch failure fall back to Reinhard; nothing raises.
    """

    def __init__(self, keys: KeysCollection, mode: str = "slide", fallback_key: str = "stain_fallback") -> None:
        super().__init__(keys)
        if mode not in STAIN_MODES:
            raise ValueError(f"stain_mode must be one of {list(STAIN_MODES)}, got {mode!r}.")
        self.mode = mode
        self.fallback_key = fallback_key
        self.fit: MacenkoFit | None = None
        self._torchstain = None

    def fit_slide(self, patches: Sequence[np.ndarray], slide: str = "") -> MacenkoFit | None:
        """Fit on HWC uint8 tissue patches of one slide; ``None`` (and Reinhard for every patch) if that fails."""
        self.fit = None
        if self.mode != "slide":
            return None
        try:
            self.fit = MacenkoFit.from_patches(patches)
        except (ValueError, np.linalg.LinAlgError) as error:
            logger.warning("%s: slide-level Macenko fit failed (%s); using Reinhard for every patch.", slide, error)
        return self.fit

    def _per_patch(self, rgb: np.ndarray) -> np.ndarray:
        if self._torchstain is None:
            self._torchstain = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        normalized, _, _ = self._torchstain.normalize(I=torch.from_numpy(np.moveaxis(rgb, -1, 0).copy()), stains=False)
        return normalized.numpy().clip(0, 255).astype(np.uint8)

    def normalize(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """Normalise one HWC uint8 patch; returns it and whether the Reinhard fallback was used."""
        if self.mode == "none":
            return rgb, False
        od = optical_density(rgb.reshape(-1, 3))  # once, for the degeneracy check and the slide map
        if is_degenerate(rgb, od) or (self.mode == "slide" and self.fit is None):
            return reinhard(rgb), True
        try:
            return (self.fit.apply(rgb, od) if self.mode == "slide" else self._per_patch(rgb)), False
        except (RuntimeError, IndexError, ValueError, np.linalg.LinAlgError):
            return reinhard(rgb), True

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        fallback = False
        for key in self.key_iterator(d):
            image = d[key]
            rgb = np.moveaxis(np.asarray(image)[:3], 0, -1).astype(np.uint8)
            normalized, used_fallback = self.normalize(rgb)
            fallback |= used_fallback
            d[key] = convert_to_dst_type(np.moveaxis(normalized, -1, 0), image)[0]
        d[self.fallback_key] = int(fallback)
        return d
