"""Reading a slide's tissue patches: blocks of neighbouring patches through MONAI's ``PatchWSIDataset``, cut apart
and streamed so that every batch holds exactly ``batch_size`` patches.

A slide is stored in compressed tiles and a reader decodes every tile a region touches: one read per block of
``read_block`` x ``read_block`` patches decodes each tile about once, where reading patch by patch decodes it once per
patch on it (``bench/research/README.md`` has the measurements). Blocks hold up to ``read_block``² patches (fewer at
the tissue's edge), so the stream hands the DataLoader single patches, which it batches as usual.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from monai.data import DataLoader, PatchWSIDataset, WSIReader
from monai.transforms import Compose, Resized
from torch.utils.data import IterableDataset, get_worker_info

from .settings import require_number
from .tiling import PatchGeometry, TissuePatches, block_samples
from .transforms import SplitBlockd


def block_dataset(
    reader: WSIReader, path: str | Path, patches: TissuePatches, geometry: PatchGeometry, read_block: int
) -> PatchWSIDataset:
    """MONAI's ``PatchWSIDataset`` over blocks of up to ``read_block`` x ``read_block`` patches, each cut into its
    patches (and resized where the level's pixel size is off). Items are lists of ``{"image", "index"}``, ``index``
    being the patch's place in ``patches``. Only reading happens here: stain and intensity normalisation run per batch
    next to the model (``scripts.transforms.PrepareSlideBatch``)."""
    transforms = [SplitBlockd(geometry.read_size)]
    if geometry.read_size != geometry.patch_size:
        transforms.append(Resized(keys="image", spatial_size=(geometry.patch_size,) * 2, mode="area"))
    return PatchWSIDataset(
        block_samples(path, patches, geometry, read_block), reader=reader, center_location=False, include_label=False,
        additional_meta_keys=["members"], transform=Compose(transforms),
    )  # fmt: skip


class PatchStream(IterableDataset):
    """The patches of ``blocks``, one by one; each DataLoader worker reads every ``num_workers``-th block."""

    def __init__(self, blocks: PatchWSIDataset) -> None:
        self.blocks = blocks

    def batches(self, batch_size: int, num_workers: int) -> int:
        """How many batches a DataLoader makes of the stream: each worker batches the patches of its own blocks."""
        sizes = [len(block["members"]) for block in self.blocks.data]
        workers = max(1, num_workers)
        return sum(-(-sum(sizes[w::workers]) // batch_size) for w in range(workers))

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for k in range(first, len(self.blocks), step):
            yield from self.blocks[k]


class PatchLoaders:
    """The DataLoader of each prepared slide: batches of ``batch_size`` uint8 patches (``image``, B x 3 x H x W) and
    their ``index`` in the slide's patches, read in blocks of ``read_block`` x ``read_block``; the last batch of each
    worker may be short."""

    def __init__(self, batch_size: int, read_block: int, num_workers: int, pin_memory: bool) -> None:
        require_number("batch_size", batch_size, 1, integer=True)
        require_number("read_block", read_block, 1, 64, integer=True)
        require_number("num_workers", num_workers, 0, integer=True)
        self.batch_size = batch_size
        self.read_block = read_block
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __call__(
        self, reader: WSIReader, path: str | Path, patches: TissuePatches, geometry: PatchGeometry
    ) -> DataLoader:
        stream = PatchStream(block_dataset(reader, path, patches, geometry, self.read_block))
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def batches(self, loader: DataLoader) -> int:
        return loader.dataset.batches(self.batch_size, self.num_workers)


def default_workers(device: str | torch.device) -> int:
    """DataLoader workers for a slide, by device and cores: beside a GPU half the cores (up to 8), since there the
    model waits for decoding; none beside a model on the CPU, where a worker took the model's cores (a
    CAMELYON16-sized slide on 2 cores: 58 s without, 87 s with one). ``--num_workers 1`` keeps a reader crashing
    natively on a corrupt tile out of the main process."""
    if torch.device(device).type != "cuda":
        return 0
    return min(8, max(1, (os.cpu_count() or 2) // 2))
