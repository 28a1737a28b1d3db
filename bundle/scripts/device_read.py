"""Decoding slide tiles on the GPU: the ``read_device`` knob, its checks, and a cuCIM reader whose patches stay there.

With the model on a GPU, JPEG decoding on the CPU becomes the whole cost of a slide. cuCIM can decode the tiles of a
JPEG-compressed tiled TIFF/SVS on the device (nvJPEG through nvImageCodec) when ``read_region`` is given a CUDA
device; the patches then go to stain normalisation and the model without a host round trip. MONAI's
``CuCIMWSIReader`` always decodes on the host (its ``device`` only moves the decoded patch), hence this reader.
Reading on the GPU happens in the main process (CUDA does not survive a fork into DataLoader workers); the slide's
header, thumbnail and stain-fit patches are still read on the CPU, in the forked probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.data import CuCIMWSIReader, WSIReader

TURN_BACK = "use --read_device cpu"
# TIFF compression codes that cuCIM decodes on the GPU: JPEG tiles (CAMELYON16 TIFFs, most Aperio SVS).
GPU_DECODABLE = {tifffile.COMPRESSION.JPEG}


def check_read_device(read_device: str, wsi_reader: str) -> str:
    """``read_device`` if this machine can decode there, else a one-line error naming the knob to turn back."""
    if read_device == "cpu":
        return read_device
    if not isinstance(read_device, str) or not (read_device == "cuda" or read_device.startswith("cuda:")):
        raise ValueError(f"read_device must be 'cpu', 'cuda' or 'cuda:N', got {read_device!r}.")
    if wsi_reader.lower() != "cucim":
        raise ValueError(f"read_device {read_device} needs --wsi_reader cuCIM (got {wsi_reader}); or {TURN_BACK}.")
    if not torch.cuda.is_available():
        raise ValueError(f"read_device {read_device}: no CUDA device here; {TURN_BACK}.")
    return read_device


def check_gpu_decodable(path: str | Path, level: int) -> None:
    """One-line error when the tiles of ``level`` are compressed in a way cuCIM cannot decode on the GPU."""
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        page = levels[min(level, len(levels) - 1)].keyframe
        compression = tifffile.COMPRESSION(page.compression)
    if compression not in GPU_DECODABLE:
        raise ValueError(
            f"{Path(path).name}: level {level} is {compression.name}-compressed, which cuCIM cannot decode on the GPU; "
            f"{TURN_BACK}."
        )


class DeviceCuCIMWSIReader(CuCIMWSIReader):
    """cuCIM decoding on ``decode_device``; each patch comes back as a C x H x W uint8 tensor on that device.

    ``decode_device`` "cpu" runs the same conversion with cuCIM's host decoder (how the tests check it, patch for
    patch, against MONAI's reader on machines without a GPU).
    """

    def __init__(self, decode_device: str = "cuda", **kwargs) -> None:
        super().__init__(**kwargs)
        self.decode_device = decode_device

    def _get_patch(self, wsi, location: tuple[int, int], size: tuple[int, int], level: int, dtype, mode: str):
        region = wsi.read_region(location=location[::-1], size=size[::-1], level=level, device=self.decode_device)
        if self.decode_device == "cpu":
            pixels = torch.from_numpy(np.asarray(region))
        else:
            if not hasattr(region, "__cuda_array_interface__"):
                raise ValueError(f"cuCIM decoded this region on {region.device}, not on the GPU; {TURN_BACK}.")
            pixels = torch.as_tensor(region, device=self.decode_device)  # zero-copy view of cuCIM's device buffer
        return pixels[..., :3].permute(2, 0, 1).contiguous()


def device_reader(read_device: str, probed_with: WSIReader, slide: str | Path, level: int) -> DeviceCuCIMWSIReader:
    """The GPU-decoding reader for ``slide``, which ``probed_with`` read: it must be cuCIM (a slide that fell back
    to OpenSlide cannot be decoded on the GPU), and the tiles of ``level`` must be JPEG."""
    if probed_with.backend != "cucim":
        raise ValueError(f"cuCIM cannot read {Path(slide).name}, so it cannot decode it on the GPU; {TURN_BACK}.")
    check_gpu_decodable(slide, level)
    return DeviceCuCIMWSIReader(decode_device=read_device)
