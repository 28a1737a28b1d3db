"""Transforms and normalisation statistics shared by training and inference."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.transforms import Transform
from skimage.color import hed_from_rgb, rgb_from_hed

from .model_files import read_normal_stats

if TYPE_CHECKING:
    from .stain import MacenkoFit


class ChannelStats:
    """Per-channel mean and std of [0, 1] training patches.

    It travels inside the checkpoint (it has ``state_dict``), so inference normalises exactly as training did.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def state_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: Mapping[str, Sequence[float]]) -> None:
        self.mean = [float(m) for m in state["mean"]]
        self.std = [float(s) for s in state["std"]]

    def normalise(self, images: torch.Tensor, max_value: float = 1.0, in_place: bool = False) -> torch.Tensor:
        """``(images / max_value - mean) / std`` per channel of a B×C×H×W batch, on the batch's device; ``in_place``
        overwrites ``images`` (the same numbers), sparing a batch-sized allocation and its page faults."""
        mean = max_value * torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = max_value * torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return images.sub_(mean).div_(std) if in_place else (images - mean) / std

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ChannelStats:
        """The training patches' statistics of the model ``path`` (from the ``normal_stats.pt`` beside it)."""
        stats = cls()
        stats.load_state_dict(read_normal_stats(path)["norm_stats"])
        return stats


class SplitBlockd(Transform):
    """Cut a block that ``PatchWSIDataset`` read (see ``scripts.tiling.block_samples``) into its patches.

    The block's ``members`` metadata lists ``[index, row, col]`` of each patch at the read level. Returns one dict
    per patch, ``{"image": CHW patch, "index": index}``: MONAI's ``list_data_collate`` flattens the lists into a
    batch, and ``index`` lets the scores be put back in the order of the slide's samples.
    """

    def __init__(self, read_size: int) -> None:
        self.read_size = read_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        block = data["image"]
        members = block.meta["members"]
        pixels = block.as_subclass(torch.Tensor)
        size = self.read_size
        return [{"image": pixels[:, row : row + size, col : col + size], "index": index} for index, row, col in members]


def image_batch(batchdata: dict, device: str | torch.device | None, non_blocking: bool) -> torch.Tensor:
    """The collated ``image`` batch as a plain tensor (no MetaTensor bookkeeping) on ``device``."""
    return torch.as_tensor(batchdata["image"]).as_subclass(torch.Tensor).to(device, non_blocking=non_blocking)


class PrepareSlideBatch:
    """ignite ``prepare_batch`` for slide patches: moves the raw RGB batch to the device, then stain- and
    intensity-normalises the whole batch there.

    Doing this per batch, as tensor operations next to the model, instead of per patch in DataLoader workers keeps
    the loaders down to reading, and lets a GPU take the normalisation too; a uint8 batch is also a quarter of the
    float32 bytes to move. Each patch's stain fallback flag goes into ``batchdata[fallback_key]``, i.e.
    ``engine.state.batch``, where ``SlideScorer`` gathers it. ``channels_last`` hands the network channels-last
    batches (``bench/inference_options.py``).
    """

    def __init__(
        self,
        stain: Callable,
        norm_stats: ChannelStats,
        fallback_key: str = "stain_fallback",
        channels_last: bool = False,
    ) -> None:
        self.stain = stain
        self.norm_stats = norm_stats
        self.fallback_key = fallback_key
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def for_slide(self, stain_fit: MacenkoFit | None) -> PrepareSlideBatch:
        """The batch preparation of one slide: this one with the slide's stain fit."""
        prepared = copy.copy(self)
        prepared.stain = self.stain.for_slide(stain_fit)
        return prepared

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, None]:
        images = image_batch(batchdata, device, non_blocking)
        rgb, fallback = self.stain(images)
        batchdata[self.fallback_key] = fallback.cpu()
        normalised = self.norm_stats.normalise(rgb, max_value=255.0, in_place=True)  # rgb is the stain's new tensor
        return normalised.contiguous(memory_format=self.memory_format), None


def compute_channel_stats(dataset: Sequence[Mapping], num_samples: int = 2048, seed: int = 42) -> ChannelStats:
    """Mean and std of up to ``num_samples`` randomly chosen uint8 CHW patches of ``dataset``, scaled to [0, 1]."""
    if len(dataset) == 0:
        raise ValueError("cannot compute normalisation statistics: the training set is empty.")
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(num_samples, len(dataset)), replace=False)
    pixels = np.stack([np.asarray(dataset[int(i)]["image"], dtype=np.float64)[:3] / 255.0 for i in indices])
    return ChannelStats(pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3)) + 1e-6)


def hed_jitter(rgb: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Scale and shift each patch's haematoxylin / eosin / DAB concentrations (Tellez et al., 2018).

    ``rgb`` is B×3×H×W in [0, 1]; ``alpha`` and ``beta`` are B×3. The shift is relative to the patch's mean
    concentration of that stain, so a ``beta`` means the same for pale and dark patches. The colour deconvolution is
    scikit-image's ``rgb2hed`` / ``hed2rgb``, written for batches: the same numbers, one matmul per direction.
    """
    log_floor = math.log(1e-6)
    to_hed = torch.as_tensor(hed_from_rgb, dtype=rgb.dtype, device=rgb.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=rgb.dtype, device=rgb.device)
    hed = torch.einsum("bchw,cd->bdhw", rgb.clamp(min=1e-6).log() / log_floor, to_hed).clamp(min=0)
    hed = hed * alpha[..., None, None] + beta[..., None, None] * hed.mean(dim=(2, 3), keepdim=True)
    return torch.einsum("bchw,cd->bdhw", hed * log_floor, to_rgb).exp().clamp(0, 1)


def random_flip_rotate(images: torch.Tensor) -> torch.Tensor:
    """Each B x C x H x W patch flipped top to bottom with probability 1/2, then turned by 0, 90, 180 or 270 degrees
    with equal probability, as MONAI's ``RandFlipd`` (prob 0.5) and ``RandRotate90d`` (prob 0.75, ``max_k`` 3) draw
    them, but for the whole batch on its device and from torch's global generator, which the training checkpoint saves,
    so that a resumed run draws the same."""
    flip = (torch.rand(len(images)) < 0.5).to(images.device)
    turns = torch.randint(0, 4, (len(images),))
    out = torch.where(flip[:, None, None, None], images.flip(2), images)
    for k in (1, 2, 3):
        chosen = (turns == k).nonzero().flatten().to(images.device)
        if len(chosen):
            out[chosen] = torch.rot90(out[chosen], k, (2, 3))
    return out


class PrepareTrainingBatch:
    """ignite ``prepare_batch`` for training and validation: uint8 patches in, ``(input, target)`` out.

    On the model's device, for the whole batch: flip and turn each patch at random (``flip_rotate``), scale to
    [0, 1], jitter the stains (``hed_jitter``), take the normalised clean patch as the target and add Gaussian noise
    (``denoise_sigma``, in [0, 1] units) to the input.
    Done per patch in DataLoader workers this cost 5.7 ms per 96-px patch; as tensor operations on the batch,
    0.5 ms. Random draws come from torch's global generator, which the training checkpoint saves, so a resumed run
    draws the same jitter and noise. With both sigmas 0 (validation, latent statistics) it only normalises.
    ``channels_last`` hands the network channels-last batches, which its convolutions then keep: 1.1–1.2× faster
    training steps on CPU (``bench/train_throughput.py``).
    """

    def __init__(
        self,
        norm_stats: ChannelStats,
        hed_jitter: float = 0.0,
        denoise_sigma: float = 0.0,
        channels_last: bool = False,
        flip_rotate: bool = False,
    ) -> None:
        self.norm_stats = norm_stats
        self.flip_rotate = flip_rotate
        self.hed_jitter = hed_jitter
        self.denoise_sigma = denoise_sigma
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = image_batch(batchdata, device, non_blocking)
        if self.flip_rotate:
            images = random_flip_rotate(images)
        clean = images.float() / 255.0
        if self.hed_jitter > 0:
            jitter = (2 * torch.rand(2, len(clean), 3) - 1).to(clean.device) * self.hed_jitter
            clean = hed_jitter(clean, 1 + jitter[0], jitter[1])
        noisy = clean
        if self.denoise_sigma > 0:
            noisy = clean + self.denoise_sigma * torch.randn(clean.shape).to(clean.device)
        inputs, targets = self.norm_stats.normalise(noisy), self.norm_stats.normalise(clean)
        return inputs.contiguous(memory_format=self.memory_format), targets.contiguous(memory_format=self.memory_format)


class PrepareLabelledBatch:
    """ignite ``prepare_batch`` for the supervised head: the patches prepared by ``prepare`` (as the VAE's training
    prepares them) and their labels as float targets for the BCE loss."""

    def __init__(self, prepare: PrepareTrainingBatch) -> None:
        self.prepare = prepare

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, _ = self.prepare(batchdata, device, non_blocking)
        return inputs, torch.as_tensor(batchdata["label"]).float().to(device, non_blocking=non_blocking)
