"""The first stage of a slide: open it, find its tissue patches, fit its stain and measure how far its colour is from
the training tissue, in a child process so that a reader crashing natively on a bad file costs that file only."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .domain import DomainCheck, DomainReading
from .isolation import IsolatedWorker
from .settings import require_number
from .stain import MacenkoFit, StainNormalizer
from .tiling import SlideTiling, slide_tiling
from .tissue import hsv_saturation
from .wsi import MPP_RANGE, SlideUnusableError, check_slide_file, make_reader, slide_fingerprint, slide_id

logger = logging.getLogger(__name__)

# Below this 99th-percentile HSV saturation a thumbnail has no stain colour at all (H&E tissue is far above it)
GREY_SATURATION = 0.02


@dataclass(frozen=True)
class PreparedSlide:
    """What scoring and the outputs need to know of one slide, made once before its patches are read."""

    path: str
    reader: str  # the backend that read it: OpenSlide where cuCIM could not
    fingerprint: dict  # the file's, taken before reading it: the content the outputs describe
    tiling: SlideTiling
    domain: DomainReading  # distance NaN where the model keeps no colour statistics
    stain_fit: MacenkoFit | None

    @property
    def id(self) -> str:
        return slide_id(self.path)


class SlidePreparer:
    """Make a ``PreparedSlide`` of a slide file, refusing a slide without tissue with the reason.

    The reading runs in one child process kept for the cohort (``IsolatedWorker``); a cuCIM failure falls back to
    OpenSlide once. The ``stain_fit_patches`` sampled for the stain fit also give the domain distance.
    """

    def __init__(
        self,
        stain: StainNormalizer,
        domain: DomainCheck,
        target_mpp: float,
        patch_size: int,
        stride: int,
        min_tissue: float,
        wsi_reader: str,
        read_device: str,
        assume_mpp: float | None,
        stain_fit_patches: int = 64,
        seed: int = 0,
    ) -> None:
        for name, value, low, high, integer in (
            ("stride", stride, 1, 4096, True), ("min_tissue", min_tissue, 0, 1, False),
            ("stain_fit_patches", stain_fit_patches, 1, None, True),
        ):  # fmt: skip
            require_number(name, value, low, high, integer)
        if assume_mpp is not None:
            require_number("assume_mpp", assume_mpp, *MPP_RANGE)
        make_reader(wsi_reader)  # an unknown reader name stops here, before any slide is touched
        if read_device != "cpu":
            raise ValueError(
                f"read_device {read_device!r} is not offered: cuCIM's GPU decoding was measured "
                "about 100x slower than decoding on the CPU (bench/research/README.md); use --read_device cpu."
            )
        self.stain = stain
        self.domain = domain
        self.tiling_settings = {
            "target_mpp": target_mpp,
            "patch_size": patch_size,
            "stride": stride,
            "min_tissue": min_tissue,
        }
        self.wsi_reader = wsi_reader
        self.assume_mpp = assume_mpp
        self.stain_fit_patches = stain_fit_patches
        self.seed = seed
        self._reader = IsolatedWorker(self.read)  # forked at the first slide

    def read(self, slide: str, backend: str) -> tuple[SlideTiling, DomainReading, MacenkoFit | None]:
        """The slide's tiling, domain reading and stain fit, read with ``backend`` (in the child)."""
        reader = make_reader(backend)
        tiling = slide_tiling(slide, reader, assume_mpp=self.assume_mpp, **self.tiling_settings)
        patches, geometry = tiling.patches, tiling.geometry
        if not len(patches) or (self.stain.mode != "slide" and self.domain.colour_stats is None):
            return tiling, DomainReading(math.nan, self.domain.limit), None
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(len(patches), size=min(self.stain_fit_patches, len(patches)), replace=False)
        wsi = reader.read(slide)
        sample = []
        for corner in patches.corners[chosen]:
            patch, _ = reader.get_data(wsi, location=corner.tolist(), size=(geometry.read_size,) * 2,
                                       level=geometry.level)  # fmt: skip
            sample.append(np.moveaxis(np.asarray(patch)[:3], 0, -1))
        return tiling, self.domain.reading(sample), self.stain.slide_fit(sample, slide)

    def __call__(self, slide: str) -> PreparedSlide:
        check_slide_file(slide)
        fingerprint = slide_fingerprint(slide)  # before the reading: the content the outputs will describe
        backend = self.wsi_reader
        try:
            found = self._reader(slide, backend)
        except Exception as error:
            if backend.lower() != "cucim" or isinstance(error, SlideUnusableError):
                raise  # the file's resolution or levels are the problem, whatever the reader
            logger.info("%s: cuCIM cannot read it (%s); reading with OpenSlide.", slide, str(error).splitlines()[0])
            backend = "OpenSlide"
            found = self._reader(slide, backend)
        prepared = PreparedSlide(str(slide), backend, fingerprint, *found)
        self._require_tissue(prepared.tiling)
        return prepared

    def _require_tissue(self, tiling: SlideTiling) -> None:
        size0 = tiling.geometry.size0
        if 0 in tiling.grid_shape:
            raise ValueError(f"smaller than one patch ({tiling.size0} level-0 px, a patch is {size0})")
        if len(tiling.patches):
            return
        if float(np.percentile(hsv_saturation(tiling.thumbnail), 99)) < GREY_SATURATION:
            raise ValueError(
                "no tissue found: the slide has no colour (a greyscale or unstained scan), and tissue is found, "
                "and scored, by its H&E stain; score the H&E-stained scan"
            )
        raise ValueError(
            f"no tissue: no {size0}-px patch has tissue fraction >= {self.tiling_settings['min_tissue']} "
            "(lower --min_tissue if the slide is pale)"
        )

    def close(self) -> None:
        self._reader.close()
