"""The second stage of a slide: its patches read and scored by the evaluator, the scores gathered in patch order.

``ScoredSlide`` is the record the later stages pass on: post-processing (``postprocess.py``) fills in the z-scores
and the called regions, each step in a new record, and the writers (``slide_outputs.py``) read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from ignite.engine import Engine, Events

from .model_files import weights_digest
from .patch_stream import PatchLoaders
from .prepare import PreparedSlide
from .regions import Region
from .wsi import make_reader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZScores:
    """A slide's patch scores against its own reference: ``(score - centre) / spread``."""

    statistics: str  # how centre and spread were taken (``scores.Z_STATISTICS``)
    centre: float
    spread: float
    values: np.ndarray  # per patch
    map: np.ndarray  # on the slide's grid, NaN off tissue
    slide_score: float  # Task 1: the highest mean z over a small window (``regions.slide_score``)


@dataclass(frozen=True)
class Decision:
    """The settings a slide's tumour cells were called with."""

    z_threshold: float
    min_region_tiles: int
    min_slide_score: float | None  # None: no slide gate


@dataclass(frozen=True)
class ScoredSlide:
    """One slide from scoring on: what the inferer gave each patch, then what post-processing adds to it."""

    slide: PreparedSlide
    inferred: np.ndarray  # the inferer's output per patch, in patch order: scores, or descriptors to score
    stain_fallback: np.ndarray  # whether Reinhard stood in for the slide's stain fit, per patch
    score_name: str = ""
    scores: np.ndarray | None = None
    z: ZScores | None = None
    candidates: np.ndarray | None = None  # the z map without the patches below the score floor
    score_floor: float | None = None  # None: no floor
    decision: Decision | None = None
    tumour: np.ndarray | None = None  # the called cells of the grid
    regions: list[Region] | None = None


class SlideScorer:
    """Run ``evaluator`` over one prepared slide's patches (its loader from ``loaders``, its stain fit in the batch
    preparation) and gather what the inferer gives each patch."""

    def __init__(self, evaluator: Engine, loaders: PatchLoaders) -> None:
        self.evaluator = evaluator
        self.loaders = loaders
        self.prepare_batch = evaluator.prepare_batch
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    @property
    def on_gpu(self) -> bool:
        return torch.device(self.evaluator.state.device or "cpu").type == "cuda"

    def settings(self) -> dict:
        """What the scores depend on beyond the config's scoring record: the weights scored with, and the inferer's
        arithmetic."""
        inferer_settings = getattr(self.evaluator.inferer, "settings", dict)
        return {**inferer_settings(), "weights": weights_digest(self.evaluator.network.state_dict())}

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        self._batches.append(
            (engine.state.output["pred"].detach().float().cpu(), torch.as_tensor(batch["stain_fallback"]),
             torch.as_tensor(batch["index"]))
        )  # fmt: skip

    def __call__(self, slide: PreparedSlide) -> ScoredSlide:
        patches, geometry = slide.tiling.patches, slide.tiling.geometry
        logger.info(
            "%s: %d tissue patches at level %d (%.3f µm/px, %d px read, %d level-0 px)",
            slide.path, len(patches), geometry.level, geometry.level_mpp, geometry.read_size, geometry.size0,
        )  # fmt: skip
        if slide.domain.out_of_domain:
            logger.warning(
                "%s: OUT OF DOMAIN: its tissue's colour is %.1f standard deviations from the normal tissue the model "
                "learned (limit %.1f): another organ, stain or scanner? Its regions are marked out_of_domain; do not "
                "read them as metastases without checking.", slide.path, slide.domain.distance, slide.domain.limit,
            )  # fmt: skip
        loader = self.loaders(make_reader(slide.reader), slide.path, patches, geometry)
        self.evaluator.data_loader = loader
        self.evaluator.state.epoch_length = self.loaders.batches(loader)
        self.evaluator.prepare_batch = self.prepare_batch.for_slide(slide.stain_fit)
        self._batches = []
        try:
            self.evaluator.run()
            outputs, fallbacks, indices = (torch.cat(column) for column in zip(*self._batches, strict=True))
        finally:
            self._batches = []
        order = indices.argsort()
        inferred = outputs[order].numpy().astype(np.float64)
        if len(inferred) != len(patches) or not torch.equal(indices[order], torch.arange(len(order))):
            raise RuntimeError(f"{slide.path}: {len(inferred)} scores for {len(patches)} patches")
        bad = int((~np.isfinite(inferred)).reshape(len(inferred), -1).any(1).sum())
        if bad:
            raise ValueError(f"{slide.path}: {bad} of {len(inferred)} patch scores are NaN/inf; check the checkpoint.")
        return ScoredSlide(slide, inferred, fallbacks[order].numpy().astype(bool))
