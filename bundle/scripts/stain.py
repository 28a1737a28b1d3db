"""H&E stain normalisation: Macenko fitted once per slide, applied to every patch as a linear map in optical density.

Fitting Macenko per patch (eigen-decomposition per 96-px patch) is slow and fails on white or pale patches; the stain
matrix and maximum concentrations of one slide are properties of the slide, so they are fitted once from a sample of
its tissue patches (with MONAI's ``ExtractHEStains``), and whole batches of patches are mapped with one 3 x 3 matrix
in optical density, as tensor operations next to the model (on its device) rather than patch by patch in the loader.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torchstain
from monai.apps.pathology.transforms import ExtractHEStains
from skimage import color
from threadpoolctl import threadpool_limits

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


def optical_density(rgb: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Absorbance of RGB values (0-255): float64 for numpy arrays, float32 on the tensor's device for tensors."""
    if isinstance(rgb, torch.Tensor):
        return torch.log((rgb.float() + 1.0).div_(BACKGROUND_INTENSITY)).neg_()
    return -np.log((rgb.astype(np.float64) + 1.0) / BACKGROUND_INTENSITY)


def reinhard(rgb: np.ndarray) -> np.ndarray:
    """Match each HWC patch's CIELAB mean and std to the reference; the std is never amplified, so flat patches stay
    flat. ``rgb``: one H x W x 3 uint8 patch or a stack of them (... x H x W x 3), converted in one call."""
    lab = color.rgb2lab(rgb)
    mean, std = lab.mean(axis=(-3, -2), keepdims=True), lab.std(axis=(-3, -2), keepdims=True)
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
        if he[0, 0] < he[0, 1]:  # haematoxylin first by the larger red absorbance, as torchstain orders the two
            he = he[:, ::-1]
        # least squares through the 2 x 3 pseudo-inverse, formed once for all pixels (lstsq solves per right-hand side)
        concentrations = np.linalg.pinv(he) @ optical_density(pixels.reshape(-1, 3)).T
        max_c = np.percentile(concentrations, 99, axis=1)
        if not np.all(np.isfinite(he)) or not np.all(max_c > 0):
            raise ValueError(f"degenerate stain fit (max concentrations {max_c})")
        return cls(he, max_c)

    @cached_property
    def od_map(self) -> torch.Tensor:
        """The whole normalisation as one 3 x 3 map of optical density: the 2 x 3 least-squares pseudo-inverse of
        ``he`` (concentrations), scaled to the reference maxima, then the reference stains. A property of the fit,
        so it is computed once per slide, not per patch."""
        to_reference = np.linalg.pinv(self.he) * (REFERENCE_MAX_C / self.max_c)[:, None]
        return torch.as_tensor(REFERENCE_HE @ to_reference, dtype=torch.float32)

    def apply(self, od: torch.Tensor) -> torch.Tensor:
        """Map the optical density of a B x 3 x H x W batch (``optical_density``) to normalised RGB, 0-255 float."""
        mapped = torch.matmul(self.od_map.to(od.device), od.flatten(2)).view_as(od)
        # back to RGB on the 0-255 grid (rounded, as a uint8 image would hold it), in place on the fresh tensor
        return mapped.neg_().exp_().mul_(BACKGROUND_INTENSITY).round_().clamp_(0, 255)


def degenerate_patches(
    od: torch.Tensor, min_stained_fraction: float = 0.1, min_od_spread: float = 0.02
) -> torch.Tensor:
    """Which patches of a B x 3 x H x W optical-density batch are white, blank, single-coloured or barely stained:
    too few pixels above the optical-density threshold in every channel, or no variation to find two stain
    directions in."""
    if od.shape[-1] < 2 or od.shape[-2] < 2:
        return torch.ones(od.shape[0], dtype=torch.bool, device=od.device)
    flat = od.flatten(2)
    mean = flat.mean(dim=2)
    spread = (flat.square().mean(dim=2) - mean.square()).clamp_(min=0).sqrt_()  # std, in 2 fast passes
    flat_colour = spread.amax(dim=1) < min_od_spread
    stained = (flat.amin(dim=1) > OD_THRESHOLD).float().mean(dim=1)
    return flat_colour | (stained < min_stained_fraction)


class StainNormalizer:
    """Macenko normalisation of whole B x 3 x H x W RGB batches (0-255, any dtype, on any device).

    Modes: ``slide`` applies the fit of ``for_slide`` (from ``slide_fit``) to the whole batch
    as one tensor operation; ``per_patch`` fits every patch with torchstain's Macenko (the slow reference
    behaviour, an implementation independent of the slide fit's, which the tests hold it to within one grey level;
    MONAI's ``NormalizeHEStains`` is the slide fit's own algorithm, and on single patches its stain-vector order swaps
    haematoxylin and eosin, up to 228 grey levels off on 15 % of patches: ``bench/research/README.md``, Stain);
    ``none`` passes patches through. Degenerate patches, a failed slide fit and any per-patch failure fall back to
    Reinhard, on the CPU in one skimage call for the batch's fallbacks (they are few); nothing raises.
    """

    def __init__(self, mode: str) -> None:
        if mode not in STAIN_MODES:
            raise ValueError(f"stain_mode must be one of {list(STAIN_MODES)}, got {mode!r}.")
        self.mode = mode
        self.fit: MacenkoFit | None = None
        self._torchstain = None

    def slide_fit(self, patches: Sequence[np.ndarray], slide: str = "") -> MacenkoFit | None:
        """The fit of one slide's HWC uint8 tissue patches; ``None`` (Reinhard for every patch) where it fails, and in
        the modes that fit no slide."""
        if self.mode != "slide":
            return None
        try:
            return MacenkoFit.from_patches(patches)
        except (ValueError, np.linalg.LinAlgError) as error:
            logger.warning("%s: slide-level Macenko fit failed (%s); using Reinhard for every patch.", slide, error)
            return None

    def for_slide(self, fit: MacenkoFit | None) -> StainNormalizer:
        """A copy of this normaliser holding ``fit``: a slide's fit is made where the slide is opened, in another
        process, and the normaliser the config declares is shared by every slide."""
        normalizer = copy.copy(self)
        normalizer.fit = fit
        return normalizer

    def _per_patch(self, rgb: torch.Tensor) -> torch.Tensor:
        # torchstain's numpy backend fits in float64 with interpolated percentiles, as MONAI's ExtractHEStains does for
        # the slide fit, so both modes give the same pixels (to 1 grey level) on the same input; its torch backend
        # (float32, nearest-rank percentiles) moves some stain vectors in the 4th decimal and pixels by up to 3 levels.
        if self._torchstain is None:
            self._torchstain = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        hwc = rgb.permute(1, 2, 0).cpu().round().to(torch.uint8).numpy()
        normalized, _, _ = self._torchstain.normalize(I=hwc, stains=False)
        return torch.from_numpy(np.moveaxis(normalized, -1, 0).astype(np.float32)).to(rgb.device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised RGB (a new float32 tensor, 0-255, same device) and a bool per patch: whether Reinhard stood
        in."""
        channels = images[:, :3]
        fallback = torch.zeros(channels.shape[0], dtype=torch.bool, device=channels.device)
        if self.mode == "none":
            return channels.to(torch.float32, copy=True), fallback
        od = optical_density(channels)
        fallback |= degenerate_patches(od)
        if self.mode == "slide" and self.fit is None:
            fallback[:] = True
        fitted = self.mode == "slide" and self.fit is not None
        out = self.fit.apply(od) if fitted else channels.to(torch.float32, copy=True)
        if self.mode == "per_patch":
            # one BLAS thread: between torch's operations OpenBLAS's threads and torch's own contend for the same
            # cores, and these small per-patch fits then spend their time waiting (bench/stain.py)
            with threadpool_limits(limits=1, user_api="blas"):
                for i in (~fallback).nonzero().flatten().tolist():
                    try:
                        out[i] = self._per_patch(channels[i].float())
                    except (RuntimeError, IndexError, ValueError, np.linalg.LinAlgError):
                        fallback[i] = True
        if fallback.any():
            patches = channels[fallback].float().permute(0, 2, 3, 1).cpu().round().to(torch.uint8).numpy()
            out[fallback] = torch.from_numpy(reinhard(patches)).permute(0, 3, 1, 2).to(out)
        return out, fallback
