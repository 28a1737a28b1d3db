"""Transforms and normalisation statistics shared by training and inference."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type
from skimage.color import hed2rgb, rgb2hed


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

    @classmethod
    def from_checkpoint(cls, path: str | Path, key: str = "norm_stats") -> ChannelStats:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if key not in checkpoint:
            raise KeyError(f"{path} holds no {key!r}; it was not written by this bundle's training workflow.")
        stats = cls()
        stats.load_state_dict(checkpoint[key])
        return stats


class SplitBlockd(Transform):
    """Cut a block that ``PatchWSIDataset`` read (see ``scripts.wsi.block_samples``) into its patches.

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


class PrepareSlideBatch:
    """ignite ``prepare_batch`` for slide patches: moves the raw RGB batch to the device, then stain- and
    intensity-normalises the whole batch there.

    Doing this per batch, as tensor operations next to the model, instead of per patch in DataLoader workers keeps
    the loaders down to reading, and lets a GPU take the normalisation too; a uint8 batch is also a quarter of the
    float32 bytes to move. Each patch's stain fallback flag goes into ``batchdata[fallback_key]``, i.e.
    ``engine.state.batch``, where the post-processor reads it.
    """

    def __init__(self, stain: Callable, norm_stats: ChannelStats, fallback_key: str = "stain_fallback") -> None:
        self.stain = stain
        self.mean = 255.0 * torch.tensor(norm_stats.mean).view(1, -1, 1, 1)
        self.std = 255.0 * torch.tensor(norm_stats.std).view(1, -1, 1, 1)
        self.fallback_key = fallback_key

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, None]:
        images = torch.as_tensor(batchdata["image"]).as_subclass(torch.Tensor).to(device, non_blocking=non_blocking)
        rgb, fallback = self.stain(images)
        batchdata[self.fallback_key] = fallback.cpu()
        return (rgb - self.mean.to(rgb.device)) / self.std.to(rgb.device), None


def compute_channel_stats(dataset: Sequence[Mapping], num_samples: int = 2048, seed: int = 42) -> ChannelStats:
    """Mean and std of up to ``num_samples`` randomly chosen uint8 CHW patches of ``dataset``, scaled to [0, 1]."""
    if len(dataset) == 0:
        raise ValueError("cannot compute normalisation statistics: the training set is empty.")
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(num_samples, len(dataset)), replace=False)
    pixels = np.stack([np.asarray(dataset[int(i)]["image"], dtype=np.float64)[:3] / 255.0 for i in indices])
    return ChannelStats(pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3)) + 1e-6)


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Perturb each haematoxylin / eosin / DAB concentration by a random scale and shift (Tellez et al., 2018).

    Works on CHW float images in [0, 1]; mimics stain variation between labs without leaving the H&E colour space.
    The shift is relative to the patch's mean concentration of that stain, so ``sigma`` means the same for pale and
    dark patches.
    """

    def __init__(self, keys: KeysCollection, sigma: float = 0.03, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.sigma = sigma
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._alpha = self.R.uniform(1 - self.sigma, 1 + self.sigma, 3)
        self._beta = self.R.uniform(-self.sigma, self.sigma, 3)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            rgb = np.moveaxis(np.asarray(image, dtype=np.float64)[:3], 0, -1).clip(0, 1)
            hed = rgb2hed(rgb)
            hed = hed * self._alpha + self._beta * hed.mean(axis=(0, 1))
            out = np.moveaxis(hed2rgb(hed), -1, 0).clip(0, 1).astype(np.float32)
            d[key] = convert_to_dst_type(out, image)[0]
        return d
