"""Whether a slide's tissue is like the tissue the model learned: a colour statistic of the training normals, kept
with the weights, and a per-slide distance from it.

Per-slide z-scores hide a slide the model should not judge (another organ, stain or scanner): every slide gets its top
few per cent called unusual, whatever it is. Each patch is described by its mean optical density (one value per RGB
channel, before stain normalisation); the training normals' descriptors give a Gaussian, and a slide's distance is the
median Mahalanobis distance of a sample of its tissue patches from it, so a tumour minority cannot move it. Colour,
not the latent score: the latent score does not separate a skin slide from tumour-heavy lymph-node tiles, and this
distance does (``bench/domain_check.py``, whose table chose ``DOMAIN_LIMIT``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .gaussian import fit_gaussian, mahalanobis
from .model_files import read_normal_stats
from .settings import require_number
from .stain import optical_density

logger = logging.getLogger(__name__)

# Midway between the farthest lymph-node H&E slide and the nearest restained one of bench/domain_check.py
DOMAIN_LIMIT = 5.3


def colour_descriptors(patches: Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
    """Mean optical density per channel of each patch (patches x 3): HWC uint8 arrays, or a B x C x H x W tensor."""
    if isinstance(patches, torch.Tensor):
        return optical_density(patches[:, :3]).mean((2, 3)).double().cpu().numpy()
    return np.stack([optical_density(np.asarray(p)[..., :3]).reshape(-1, 3).mean(0) for p in patches])


def fit_colour_stats(descriptors: np.ndarray) -> dict:
    """The Gaussian of the training normals' descriptors (mean and precision), as ``normal_stats.pt`` keeps it."""
    if len(descriptors) < 4:
        raise ValueError(f"colour statistics need at least 4 normal patches, got {len(descriptors)}.")
    gaussian = fit_gaussian(torch.from_numpy(descriptors).double(), ridge=1e-6)
    return {**gaussian, "mean": gaussian["mean"].float(), "precision": gaussian["precision"].float()}


@dataclass(frozen=True)
class DomainReading:
    """How far a slide's tissue colour is from the training normals' (NaN: not measured), and the flag's limit."""

    distance: float
    limit: float

    @property
    def out_of_domain(self) -> bool:
        return bool(self.distance > self.limit)


@dataclass(frozen=True)
class DomainCheck:
    """The training normals' colour Gaussian (None for a model whose statistics hold none) and the distance above
    which a slide is flagged ``out_of_domain``."""

    colour_stats: dict | None
    limit: float = DOMAIN_LIMIT

    def __post_init__(self) -> None:
        require_number("domain_limit", self.limit, 0.0)

    @classmethod
    def from_checkpoint(cls, path: str | Path, limit: float = DOMAIN_LIMIT) -> DomainCheck:
        stats = read_normal_stats(path).get("colour_stats")
        if stats is None:
            logger.info("%s keeps no colour statistics: slides are not checked for being "
                        "out of domain; run train.json's write_normal_stats workflow to add them.", path)  # fmt: skip
        return cls(stats, limit)

    def distance(self, patches: Sequence[np.ndarray]) -> float:
        """The median distance of ``patches`` (HWC) from the training normals, in their standard deviations; NaN when
        the model keeps no statistics."""
        if self.colour_stats is None or not len(patches):
            return math.nan
        stats = self.colour_stats
        distances = mahalanobis(colour_descriptors(patches), stats["mean"].double().numpy(),
                                stats["precision"].double().numpy())  # fmt: skip
        return float(np.median(distances))

    def reading(self, patches: Sequence[np.ndarray]) -> DomainReading:
        return DomainReading(self.distance(patches), self.limit)
