"""GPU decoding (``read_device``): what can be checked without a GPU. The GPU numbers come from bench/gpu_check.sh."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.data import CuCIMWSIReader
from test_inference_cli import run_inference

from conftest import write_slide
from scripts.device_read import DeviceCuCIMWSIReader, check_gpu_decodable, check_read_device, device_reader
from scripts.pyramid import write_pyramid
from scripts.wsi import make_reader


def test_cpu_needs_nothing_and_unknown_devices_are_refused():
    assert check_read_device("cpu", "OpenSlide") == "cpu"
    with pytest.raises(ValueError, match="read_device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        check_read_device("gpu", "cuCIM")


def test_cuda_reading_needs_cucim_and_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="needs --wsi_reader cuCIM .* use --read_device cpu"):
        check_read_device("cuda", "OpenSlide")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="read_device cuda:1: no CUDA device here; use --read_device cpu"):
        check_read_device("cuda:1", "cuCIM")


def test_device_reader_gives_monais_patches_when_decoding_on_the_cpu(slide_0243):
    """The GPU path's own code (location order, channels first, RGB) against MONAI's reader, decoded on the host."""
    ours, monai = DeviceCuCIMWSIReader(decode_device="cpu"), CuCIMWSIReader()
    wsi_ours, wsi_monai = ours.read(str(slide_0243)), monai.read(str(slide_0243))
    for location, size, level in (((1000, 1500), (96, 96), 2), ((768, 1024), (384, 200), 0), ((0, 0), (64, 64), 3)):
        patch, meta = ours.get_data(wsi_ours, location=location, size=size, level=level)
        expected, _ = monai.get_data(wsi_monai, location=location, size=size, level=level)
        assert isinstance(patch, torch.Tensor) and patch.dtype == torch.uint8 and patch.shape == (3, *size)
        assert np.array_equal(patch.numpy(), expected) and tuple(meta["location"]) == location


def test_only_jpeg_tiles_are_decoded_on_the_gpu(slide_0243, tmp_path):
    check_gpu_decodable(slide_0243, 2)  # JPEG tiles: nothing to say
    deflated = write_pyramid(tmp_path / "deflated.tif", np.full((512, 512, 3), 200, np.uint8), 0.5,
                             compression="zlib")  # fmt: skip
    with pytest.raises(ValueError, match="deflated.tif: level 1 is ADOBE_DEFLATE-compressed, .* use --read_device cpu"):
        check_gpu_decodable(deflated, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_inference_with_read_device_cuda_on_a_cpu_machine_stops_before_any_slide(tmp_path, slide_05, tiny_checkpoint):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(slide_05, folder / "s.tif")
    result = run_inference(tiny_checkpoint, folder, tmp_path / "out", "--read_device", "cuda", "--wsi_reader", "cuCIM")
    assert result.returncode != 0
    assert "ERROR: ValueError: read_device cuda: no CUDA device here; use --read_device cpu." in result.stderr
    assert not (tmp_path / "out" / "s").exists()


def test_device_reader_is_used_only_for_what_cucim_read(tmp_path):
    slide = write_slide(tmp_path / "s.tif", 0.5)
    with pytest.raises(ValueError, match="cuCIM cannot read s.tif, so it cannot decode it on the GPU"):
        device_reader("cuda", make_reader("OpenSlide"), slide, 1)
    reader = device_reader("cuda", make_reader("cuCIM"), slide, 1)
    assert isinstance(reader, DeviceCuCIMWSIReader) and reader.decode_device == "cuda"
