"""Post-processing of one slide's patch scores: z-scores against the slide's own statistics, then called regions.

``SlidePostprocessor`` is the evaluator's handler; the files it makes are written by ``slide_outputs.SlideOutputs``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from .regions import called_map, slide_score, trace_regions
from .scores import Z_STATISTICS, AnomalyScore, slide_reference
from .settings import require_number
from .slide_outputs import PATCH_COLUMNS, SlideOutputs
from .tiling import PatchGeometry, TissueGrid
from .wsi import slide_id

logger = logging.getLogger(__name__)


@dataclass
class SlideJob:
    """What the post-processing handler needs to know about the slide the evaluator is scoring."""

    slide: str
    patches: TissueGrid
    geometry: PatchGeometry
    facts: dict
    settings: dict = field(default_factory=dict)
    outputs: list[torch.Tensor] = field(default_factory=list)  # the inferer's: scores, or descriptors for rarity
    fallbacks: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)  # which sample each score is (blocks reorder them)

    @property
    def slide_id(self) -> str:
        return slide_id(self.slide)


class SlidePostprocessor:
    """Ignite handler: collect one slide's patch scores, then z-score, threshold, clean, trace and write outputs.

    Outputs in ``output_dir/<slide_id>/``: ``patches.csv``, ``score_map.npy`` + ``score_map.json``, ``heatmap.png``,
    ``regions.geojson`` and ``regions.xml``, and the ``thumbnail.jpg`` and ``tissue_mask.png`` that evaluation draws
    on (at ``thumbnail_downsample``); every file is written atomically. ``summary`` holds the slide's row.
    """

    def __init__(
        self,
        output_dir: str | Path,
        score: AnomalyScore,
        z_threshold: float = 2.0,
        min_region_tiles: int = 5,
        z_statistics: str = "mean_std",
        score_floor: float = -math.inf,
        min_slide_score: float = -math.inf,
    ):
        if z_statistics not in Z_STATISTICS:
            raise ValueError(f"--z_statistics must be one of {list(Z_STATISTICS)}, got {z_statistics!r}.")
        require_number("z_threshold", z_threshold, -20, 20)
        require_number("min_region_tiles", min_region_tiles, 1, integer=True)
        self.z_statistics = z_statistics
        self.output_dir = Path(output_dir)
        self.score = score
        self.z_threshold = float(z_threshold)
        self.min_region_tiles = int(min_region_tiles)
        self.score_floor = float(score_floor)
        if min_slide_score != -math.inf:
            require_number("min_slide_score", min_slide_score, -20, 20)
        self.min_slide_score = float(min_slide_score)
        self.job: SlideJob | None = None
        self.summary: dict = {}
        self.outputs: Callable[[], None] | None = None  # writes the slide's files once ``finish`` has run

    @property
    def recorded_floor(self) -> float | None:
        """``score_floor`` as JSON can hold it (None: no floor)."""
        return None if math.isinf(self.score_floor) else self.score_floor

    @property
    def recorded_gate(self) -> float | None:
        """``min_slide_score`` as JSON can hold it (None: no gate)."""
        return None if math.isinf(self.min_slide_score) else self.min_slide_score

    def begin(self, job: SlideJob) -> None:
        self.job = job
        self.summary = {}
        self.outputs = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def collect(self, engine: Engine) -> None:
        self.job.outputs.append(engine.state.output["pred"].detach().float().cpu())
        self.job.fallbacks.append(torch.as_tensor(engine.state.batch["stain_fallback"]))
        self.job.indices.append(torch.as_tensor(engine.state.batch["index"]))

    def finish(self, engine: Engine) -> None:
        job = self.job
        indices = torch.cat(job.indices)
        order = indices.argsort()
        outputs = torch.cat(job.outputs)[order].numpy().astype(np.float64)
        if len(outputs) != len(job.patches) or not torch.equal(indices[order], torch.arange(len(order))):
            raise RuntimeError(f"{job.slide}: {len(outputs)} scores for {len(job.patches)} patches")
        bad = int((~np.isfinite(outputs)).reshape(len(outputs), -1).any(1).sum())
        if bad:
            raise ValueError(f"{job.slide}: {bad} of {len(outputs)} patch scores are NaN/inf; check the checkpoint.")
        geometry, facts = job.geometry, job.facts
        grid = job.patches.cells
        slide_scores = self.score.slide_scores
        scores = slide_scores(outputs, grid, job.slide) if slide_scores else outputs
        centre, spread = slide_reference(scores, self.z_statistics)
        z = (scores - centre) / spread if spread > 0 else np.zeros_like(scores)
        z_map = np.full(facts["shape"], np.nan, dtype=np.float32)
        z_map[grid[:, 0], grid[:, 1]] = z
        tumour_map = called_map(z_map, grid, scores, self.z_threshold, self.min_region_tiles, self.score_floor,
                                self.min_slide_score)  # fmt: skip
        regions = trace_regions(tumour_map, z_map, geometry.stride0, size=geometry.size0)

        patches = pd.DataFrame(
            {
                "x": job.patches.corners[:, 1],
                "y": job.patches.corners[:, 0],
                "size0": geometry.size0,
                "level": geometry.level,
                "score": scores,
                "z": z,
                "tissue_fraction": [round(float(f), 4) for f in job.patches.tissue_fraction],
                "stain_fallback": torch.cat(job.fallbacks)[order].numpy().astype(int),
                "tumour": tumour_map[grid[:, 0], grid[:, 1]].astype(int),
            },
            columns=PATCH_COLUMNS,
        )
        distance = None if math.isnan(facts["domain_distance"]) else facts["domain_distance"]  # JSON holds no NaN
        grid_info = {
            "origin": [0, 0],
            "stride": geometry.stride0,
            "size": geometry.size0,
            "shape": list(z_map.shape),
            "units": "level-0 px; cell (i, j) spans x in [j*stride, j*stride+size), y in [i*stride, i*stride+size)",
            "level": geometry.level,
            "mpp0": geometry.mpp0,
            "score": self.score.name,
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "z_statistics": self.z_statistics,
            "z_centre": centre,
            "z_spread": spread,
            "z_threshold": self.z_threshold,
            "min_region_tiles": self.min_region_tiles,
            "score_floor": self.recorded_floor,
            "slide_score": slide_score(z_map),
            "min_slide_score": self.recorded_gate,
            "thumbnail_downsample": facts["mask_downsample"],
            "domain_distance": distance,
            "out_of_domain": facts["out_of_domain"],
        }
        mm2_per_mask_px = (facts["mask_downsample"] * geometry.mpp0) ** 2 / 1e6
        self.summary = {
            "n_patches": len(scores),
            "tissue_mm2": round(float(facts["mask"].sum()) * mm2_per_mask_px, 4),
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "tumour_mm2": round(sum(r.area_px() for r in regions) * geometry.mpp0**2 / 1e6, 4),
            "stain_fallbacks": int(patches["stain_fallback"].sum()),
            "domain_distance": None if distance is None else round(distance, 3),
            "out_of_domain": facts["out_of_domain"],
        }
        outputs = SlideOutputs(
            job.slide, patches, z_map, grid_info, regions, facts, geometry, job.settings, dict(self.summary),
            f"{job.slide_id}: {self.score.name} anomaly z-score, {len(regions)} region(s)",
        )  # fmt: skip
        self.outputs = functools.partial(outputs.write, self.output_dir / job.slide_id)
        # an empty region file is a result too: say how close the slide came to the threshold
        gated = grid_info["slide_score"] < self.min_slide_score
        logger.info(
            "%s: %d region(s), %.4f mm² at z >= %.2f and >= %d patches (highest patch z %.2f, slide score %.2f%s)",
            job.slide_id, len(regions), self.summary["tumour_mm2"], self.z_threshold, self.min_region_tiles, z.max(),
            grid_info["slide_score"], f" < min_slide_score {self.min_slide_score:.2f}: none called" if gated else "",
        )  # fmt: skip
