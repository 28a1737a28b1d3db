"""The third stage of a slide: its patch scores turned into called regions, by small transforms that
``inference.json`` chains in a MONAI ``Compose`` (``postprocessing``), each taking a ``ScoredSlide`` and returning a
new one with its own part filled in:

``PatchScores`` (slide-relative scores) -> ``ZScore`` -> ``ScoreFloor`` -> ``CleanUp`` (threshold, small regions,
slide gate) -> ``TraceRegions`` (outlines). A step can be replaced, or one added, with one config override.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from .regions import area_mm2, gated_clean_mask, slide_score, trace_regions, two_scale_map
from .scores import Z_STATISTICS, AnomalyScore, slide_reference
from .settings import DECISION_RANGES, recorded, require_number
from .slide_scorer import Decision, ScoredSlide, ZScores

logger = logging.getLogger(__name__)


class PatchScores:
    """The score of each patch: what the inferer gave it, or, for a slide-relative score (``rarity``), its
    descriptors compared across the slide."""

    def __init__(self, score: AnomalyScore) -> None:
        self.score = score

    def __call__(self, scored: ScoredSlide) -> ScoredSlide:
        relative = self.score.slide_scores
        cells = scored.slide.tiling.patches.cells
        scores = relative(scored.inferred, cells, scored.slide.path) if relative else scored.inferred
        return dataclasses.replace(scored, score_name=self.score.name, scores=scores)


class ZScore:
    """z-scores against the slide's own scores (``statistics``: ``mean_std`` or ``median_mad``), so that what is
    unusual is judged within the slide's own stain, scanner and section."""

    def __init__(self, statistics: str) -> None:
        if statistics not in Z_STATISTICS:
            raise ValueError(f"--z_statistics must be one of {list(Z_STATISTICS)}, got {statistics!r}.")
        self.statistics = statistics

    def __call__(self, scored: ScoredSlide) -> ScoredSlide:
        scores, tiling = scored.scores, scored.slide.tiling
        centre, spread = slide_reference(scores, self.statistics)
        z = (scores - centre) / spread if spread > 0 else np.zeros_like(scores)
        z_map = np.full(tiling.grid_shape, np.nan, dtype=np.float32)
        z_map[tiling.patches.cells[:, 0], tiling.patches.cells[:, 1]] = z
        zscores = ZScores(self.statistics, centre, spread, z, z_map, slide_score(z_map))
        return dataclasses.replace(scored, z=zscores)


class ScoreFloor:
    """Leave out the patches scoring below ``floor`` (unusual for their slide, but not against the training normals);
    ``-inf`` leaves out none."""

    def __init__(self, floor: float) -> None:
        self.floor = float(floor)

    def __call__(self, scored: ScoredSlide) -> ScoredSlide:
        candidates = two_scale_map(scored.z.map, scored.slide.tiling.patches.cells, scored.scores, self.floor)
        return dataclasses.replace(scored, candidates=candidates, score_floor=recorded(self.floor))


class CleanUp:
    """Call the candidate cells above ``z_threshold`` in regions of at least ``min_region_tiles`` patches (smaller
    holes filled), none on a slide whose slide score is below ``min_slide_score``."""

    def __init__(self, z_threshold: float, min_region_tiles: int, min_slide_score: float) -> None:
        for name, value in (("z_threshold", z_threshold), ("min_region_tiles", min_region_tiles)):
            require_number(name, value, *DECISION_RANGES[name], integer=name == "min_region_tiles")
        if min_slide_score != -math.inf:
            require_number("min_slide_score", min_slide_score, *DECISION_RANGES["min_slide_score"])
        self.z_threshold = float(z_threshold)
        self.min_region_tiles = int(min_region_tiles)
        self.min_slide_score = float(min_slide_score)

    def __call__(self, scored: ScoredSlide) -> ScoredSlide:
        candidates = scored.z.map if scored.candidates is None else scored.candidates
        tumour = gated_clean_mask(
            candidates, scored.z.slide_score, self.z_threshold, self.min_region_tiles, self.min_slide_score
        )
        decision = Decision(self.z_threshold, self.min_region_tiles, recorded(self.min_slide_score))
        return dataclasses.replace(scored, tumour=tumour, decision=decision)


class TraceRegions:
    """Outline each 8-connected group of called cells as one region of level-0 polygons, and log what was called."""

    def __call__(self, scored: ScoredSlide) -> ScoredSlide:
        geometry, decision, z = scored.slide.tiling.geometry, scored.decision, scored.z
        regions = trace_regions(scored.tumour, z.map, geometry.stride0, size=geometry.size0)
        gate = decision.min_slide_score
        gated = gate is not None and z.slide_score < gate
        # an empty region file is a result too: say how close the slide came to the threshold
        logger.info(
            "%s: %d region(s), %.4f mm² at z >= %.2f and >= %d patches (highest patch z %.2f, slide score %.2f%s)",
            scored.slide.id, len(regions), area_mm2(regions, geometry.mpp0), decision.z_threshold,
            decision.min_region_tiles, z.values.max(), z.slide_score,
            f" < min_slide_score {gate:.2f}: none called" if gated else "",
        )  # fmt: skip
        return dataclasses.replace(scored, regions=regions)
