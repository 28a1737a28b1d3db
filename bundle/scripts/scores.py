"""Anomaly scores of patches under the trained VAE; higher always means more anomalous."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from monai.metrics.regression import compute_ssim_and_cs

from .gaussian import mahalanobis
from .head import LatentHead, head_digest, read_head
from .model_files import read_normal_stats
from .settings import DECISION_RANGES, require_number
from .transforms import ChannelStats

SCORES = ("l1", "mse", "ssim", "latent", "l1_ratio", "bottleneck_ratio")  # each patch on its own, label-free
LABELLED_SCORES = ("head",)  # a supervised head's, trained with labels (``train_head``)
SLIDE_RELATIVE_SCORES = ("rarity",)  # each patch against the rest of its slide (``SlideRarity``)
COMPLEXITY_FACTOR = 4
RARITY_LEVEL = 1  # the encoder level whose feature statistics ``rarity`` compares (48 px for 96-px patches)
SCORE_QUANTILES = 1001  # the training normals' ``latent`` scores are kept as this many quantiles (0.1 % apart)
Z_STATISTICS = ("mean_std", "median_mad")
MAD_TO_STD = 1.4826  # the median absolute deviation times this is the standard deviation, for normal data


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX or AVX512-BF16, Arm BF16).

    Only there is bf16 autocast a gain for the model; where it is emulated it is several times slower
    (``bench/inference_options.py`` measures both).
    """
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("amx_bf16", "avx512_bf16", "bf16"))


def minor_component_precision(precision: torch.Tensor, ignored_variance: float) -> torch.Tensor:
    """The precision matrix with the leading principal components of the normal latents taken out: the fewest that
    together hold at least ``ignored_variance`` of their variance (0: unchanged).

    Those components carry what varies most among normal patches (for the shipped model the first is how dark the
    tissue is), so a Mahalanobis distance over the rest measures what normal tissue does not do: the minor components,
    where Mahalanobis detectors find their signal (Kamoi & Kobayashi 2020; Rippel et al. 2020).
    """
    if not 0.0 <= ignored_variance < 1.0:
        raise ValueError(f"latent_ignored_variance must be in [0, 1), got {ignored_variance}.")
    if ignored_variance == 0.0:
        return precision
    eigenvalues, eigenvectors = torch.linalg.eigh(precision.double())  # ascending precision = descending variance
    variance = 1.0 / eigenvalues
    leading = int((torch.cumsum(variance, 0) / variance.sum() < ignored_variance).sum()) + 1
    minor = eigenvectors[:, leading:]
    return ((minor * eigenvalues[leading:]) @ minor.T).to(precision.dtype)


def check_score(score: str, tta: bool) -> None:
    """Refuse an unknown score, and ``tta`` for any but the label-free per-patch scores."""
    known = SCORES + SLIDE_RELATIVE_SCORES + LABELLED_SCORES
    if score not in known:
        raise ValueError(f"score must be one of {list(known)}, got {score!r}.")
    if score not in SCORES and tta:  # tta averages squares: distances only, not per-slide descriptors or log-odds
        raise ValueError(f"tta applies to the label-free per-patch scores, not {score!r}; pass --tta False.")


def normal_score_floor(ckpt_path: str | Path, score: str, normal_quantile: float) -> float:
    """The ``latent`` score that ``normal_quantile`` of the training normals stay below: the second scale of the
    decision, on which a patch must also be unusual against the tissue the model learned, not only for its slide
    (``-inf`` at 0, where the slide alone decides)."""
    require_number("normal_quantile", normal_quantile, *DECISION_RANGES["normal_quantile"])
    if normal_quantile == 0:
        return -np.inf
    if score != "latent":
        raise ValueError(f"normal_quantile applies to score 'latent', not {score!r}; pass --normal_quantile 0.")
    quantiles = read_normal_stats(ckpt_path)["latent_stats"].get("score_quantiles")
    if quantiles is None:
        raise ValueError(
            f"{ckpt_path}'s normal_stats.pt keeps no score quantiles of the training normals; "
            "run the training config's write_normal_stats workflow, or pass --normal_quantile 0."
        )
    return float(np.interp(normal_quantile, np.linspace(0, 1, len(quantiles)), quantiles.double().numpy()))


def normal_score_floors(ckpt_path: str | Path, score: str, normal_quantiles: Sequence[float]) -> dict[float, float]:
    """``normal_score_floor`` of each quantile calibration tries; only 0 (the slide alone decides) for another score
    or a model that keeps no quantiles."""
    kept = score == "latent" and "score_quantiles" in read_normal_stats(ckpt_path)["latent_stats"]
    return {float(q): normal_score_floor(ckpt_path, score, q) for q in normal_quantiles if kept or q == 0} or {
        0.0: -np.inf
    }


def median_mad(values: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The median and the scaled median absolute deviation: a centre and spread that outliers under half of the values
    (the tumour being looked for) cannot drag."""
    median = np.median(values, axis)
    return median, MAD_TO_STD * np.median(np.abs(values - median), axis)


def slide_reference(scores: np.ndarray, statistics: str) -> tuple[float, float]:
    """The centre and spread that turn a slide's scores into z-scores: ``mean_std`` (which the tumour being looked
    for pulls up) or ``median_mad``."""
    if statistics == "mean_std":
        return float(scores.mean()), float(scores.std())
    median, spread = median_mad(scores)
    return float(median), float(spread)


class AnomalyScoreInferer(Inferer):
    """Encode, decode from mu (no sampling, so scores are deterministic) and score each patch.

    ``l1`` / ``mse``: reconstruction error in the normalised space the model works in. ``ssim``: 1 - SSIM of the
    reconstruction, both mapped back to [0, 1] RGB. ``latent``: Mahalanobis distance of mu from the Gaussian of
    normal training latents stored in ``normal_stats.pt`` (``latent_stats``). ``l1_ratio``: the model's L1 error divided
    by that of a trivial reconstruction (4x average-pool then upsample): an input-complexity correction in the spirit
    of Serrà et al. (ICLR 2020), so that busy normal tissue does not outscore smooth tumour merely for being busy.
    ``bottleneck_ratio``: the same ratio for the reconstruction decoded from the latent alone (every skip zeroed, as
    skip dropout trains the decoder to do): through the skips the decoder can copy any tissue, tumour included, while
    the 3x3 latent only carries what the model learned of normal tissue.

    ``tta``: score each patch in the 8 orientations the model was trained on (4 rotations, with and without a
    flip) and return the root mean square, so that a score no longer depends on how the section lay on the glass.
    For ``latent`` that is the Mahalanobis distance averaged as its square. 8x the model's work.

    ``latent_ignored_variance``: leave out of the ``latent`` distance the leading principal components of the normal
    latents that hold this share of their variance (``minor_component_precision``).

    ``head``: the log-odds of tumour that a supervised head (``train_head``, ``head.py``) gives the latent mean:
    monotone in its probability, and not squashed at 0 and 1, so that a slide's z-scores still spread.

    ``rarity``: not a score yet but each patch's descriptor, the channel means and standard deviations of the encoder's
    48-px feature map, which ``SlideRarity`` turns into scores once the whole slide is in (``tta`` does not apply).

    ``cpu_bf16``: run the network under bf16 autocast when the batch is on the CPU (MONAI's engines autocast on CUDA
    only); the scores themselves are computed in float32 from the network's outputs.
    """

    def __init__(
        self,
        score: str,
        norm_stats: ChannelStats,
        latent_stats: dict | None = None,
        tta: bool = False,
        cpu_bf16: bool = False,
        latent_ignored_variance: float = 0.0,
        head: LatentHead | None = None,
    ) -> None:
        super().__init__()
        check_score(score, tta)
        if score == "head" and head is None:
            raise ValueError("--score head needs --head_path FILE: the head.pt that run train_head wrote.")
        self.head = head
        if score == "latent" and latent_stats is None:
            raise ValueError(
                "score 'latent' needs latent_stats in normal_stats.pt; retrain with this bundle's train.json."
            )
        self.score = score
        self.mean = torch.tensor(norm_stats.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(norm_stats.std).view(1, -1, 1, 1)
        self.latent_ignored_variance = float(latent_ignored_variance)
        self.latent_stats = latent_stats and {
            **latent_stats,
            "precision": minor_component_precision(latent_stats["precision"], self.latent_ignored_variance),
        }
        self.tta = tta
        self.cpu_bf16 = cpu_bf16

    @classmethod
    def from_checkpoint(
        cls, score: str, path: str | Path, tta: bool = False, cpu_bf16: bool = False,
        latent_ignored_variance: float = 0.0, head_path: str | Path | None = None,
    ) -> AnomalyScoreInferer:  # fmt: skip
        stats = read_normal_stats(path)
        head = read_head(head_path, path) if score == "head" else None
        return cls(score, ChannelStats.from_checkpoint(path), stats.get("latent_stats"), tta, cpu_bf16,
                   latent_ignored_variance, head)  # fmt: skip

    def settings(self) -> dict:
        """How the scores are computed beyond the score's own settings (``AnomalyScore.settings``), for telling stale
        outputs apart."""
        return {"cpu_bf16": self.cpu_bf16}

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        inputs = inputs.as_subclass(torch.Tensor)
        if not self.tta:
            return self.score_batch(inputs, network)
        # one orientation at a time: the batch's activation memory stays that of a single pass
        views = (torch.rot90(view, k, (2, 3)) for view in (inputs, inputs.flip(3)) for k in range(4))
        return torch.stack([self.score_batch(view, network) for view in views]).pow(2).mean(0).sqrt()

    def network_precision(self, inputs: torch.Tensor) -> torch.autocast:
        """bf16 autocast for the network's own layers on the CPU with ``cpu_bf16``; the scores stay float32."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and inputs.device.type == "cpu")

    def score_batch(self, inputs: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
        with self.network_precision(inputs):
            mu, _, skips = network.encode(inputs)
        if self.score == "latent":
            stats = self.latent_stats
            return mahalanobis(mu.flatten(1).float(), stats["mean"].to(mu.device), stats["precision"].to(mu.device))
        if self.score == "head":
            return self.head.to(mu.device)(mu)
        if self.score == "rarity":
            features = skips[RARITY_LEVEL].float()
            return torch.cat([features.mean((2, 3)), features.std((2, 3))], 1)
        if self.score == "bottleneck_ratio":
            skips = [torch.zeros_like(skip) for skip in skips]
        with self.network_precision(inputs):
            recon = network.decode(mu, skips).float()
        error = (recon - inputs).abs().flatten(1).mean(1)
        if self.score == "l1":
            return error
        if self.score in ("l1_ratio", "bottleneck_ratio"):
            smooth = torch.nn.functional.avg_pool2d(inputs.float(), COMPLEXITY_FACTOR)
            trivial = torch.nn.functional.interpolate(smooth, scale_factor=COMPLEXITY_FACTOR, mode="nearest")
            return error / (trivial - inputs).abs().flatten(1).mean(1).clamp(min=1e-6)
        if self.score == "mse":
            return (recon - inputs).pow(2).flatten(1).mean(1)
        mean, std = self.mean.to(inputs.device), self.std.to(inputs.device)
        ssim, _ = compute_ssim_and_cs(
            y_pred=(recon * std + mean).clamp(0, 1),
            y=(inputs.float() * std + mean).clamp(0, 1),
            spatial_dims=2,
            kernel_size=[11, 11],
            kernel_sigma=[1.5, 1.5],
            data_range=1.0,
            kernel_type="gaussian",
        )
        return 1.0 - ssim.flatten(1).mean(1)


class SlideRarity:
    """How unlike the rest of its slide each patch is: the mean distance of its descriptor to those of its
    ``neighbours`` nearest patches lying more than ``exclusion`` grid cells away (Chebyshev distance).

    The reference is the slide's own tissue (same section, stain and scanner), not the training tissue: on the
    bench's tumour-sparse slides it finds more of the small lesions than ``latent`` without ranking patches better
    (``bench/README.md``). The exclusion keeps a lesion from vouching for itself: a patch inside a metastasis narrower
    than the exclusion finds no patch of the same lesion among its neighbours. A lesion much wider than that, or a
    slide that is mostly tumour, is its own neighbourhood and is missed. Descriptors are
    standardised per slide (median and MAD), so that no channel dominates the distance by its scale.
    """

    def __init__(self, neighbours: int, exclusion: int, chunk: int = 2048) -> None:
        require_number("rarity_neighbours", neighbours, 1, integer=True)
        require_number("rarity_exclusion", exclusion, 0, integer=True)
        self.neighbours, self.exclusion, self.chunk = int(neighbours), int(exclusion), chunk

    def settings(self) -> dict:
        return {"rarity_neighbours": self.neighbours, "rarity_exclusion": self.exclusion}

    def __call__(self, descriptors: np.ndarray, grid: np.ndarray, slide: str) -> np.ndarray:
        """Scores of ``slide``'s patch ``descriptors`` (patches x features) at ``grid`` (patches x (row, col))."""
        median, spread = median_mad(descriptors, axis=0)
        features = torch.from_numpy((descriptors - median) / np.maximum(spread, 1e-6)).float()
        rows, cols = torch.from_numpy(np.asarray(grid, dtype=np.int32)).T
        scores = []
        for start in range(0, len(features), self.chunk):
            end = start + self.chunk
            distances = torch.cdist(features[start:end], features)
            apart = ((rows[start:end, None] - rows).abs() > self.exclusion) | (
                (cols[start:end, None] - cols).abs() > self.exclusion
            )
            nearest = distances.masked_fill(~apart, float("inf")).topk(self.neighbours, largest=False).values
            if torch.isinf(nearest).any():  # a patch without enough patches beyond the exclusion
                eligible = int(apart.sum(1).min())
                raise ValueError(
                    f"{slide}: a patch has {eligible} patches more than rarity_exclusion {self.exclusion} cells away, "
                    f"fewer than rarity_neighbours {self.neighbours}: too little tissue for the rarity score; use "
                    "--score latent or a smaller --rarity_exclusion."
                )
            scores.append(nearest.mean(1))
        return torch.cat(scores).double().numpy()


@dataclass(frozen=True)
class AnomalyScore:
    """The score of a run, chosen once in the config and handed to all that depends on it: ``inferer`` computes it per
    patch, ``slide_scores`` turns the inferer's descriptors into scores once a slide is in (slide-relative scores
    only), ``floors`` are its second scale, and ``settings`` is what calibrations and resumed runs compare."""

    name: str
    tta: bool
    latent_ignored_variance: float
    rarity: SlideRarity
    head_path: str | None = None  # the head.pt of score ``head``

    def __post_init__(self) -> None:
        check_score(self.name, self.tta)
        if self.name == "head" and not self.head_path:
            raise ValueError("--score head needs --head_path FILE: the head.pt that run train_head wrote.")

    @property
    def slide_scores(self) -> SlideRarity | None:
        return self.rarity if self.name in SLIDE_RELATIVE_SCORES else None

    def settings(self) -> dict:
        """The score and its knobs, the ``rarity`` ones only for the score that uses them."""
        slide_scores = self.slide_scores
        return {
            "score": self.name, "tta": self.tta, "latent_ignored_variance": self.latent_ignored_variance,
            **(slide_scores.settings() if slide_scores else {}),
            **({"head": head_digest(self.head_path)} if self.name == "head" else {}),
        }  # fmt: skip

    def inferer(self, ckpt_path: str | Path, cpu_bf16: bool = False) -> AnomalyScoreInferer:
        return AnomalyScoreInferer.from_checkpoint(
            self.name, ckpt_path, self.tta, cpu_bf16, self.latent_ignored_variance, self.head_path
        )

    def floors(self, ckpt_path: str | Path, normal_quantiles: Sequence[float]) -> dict[float, float]:
        return normal_score_floors(ckpt_path, self.name, normal_quantiles)
