#!/usr/bin/env bash
# Run here, before a GPU check: puts in .gpu/ (git-ignored, carried to the device machine) the wheels its image lacks,
# for its Python 3.12 and CUDA 13 (torch there is a cu130 build, CuPy cupy-cuda13x), at this venv's versions, and 8 of
# the real tiles. The carried tree must stay under 64 MiB: imagecodecs (26 MB) is left out, bench/memory.py then
# writes the synthetic slide's JPEG tiles with Pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
TILES=${TILES:-../shared/data/camelyon16_tiles}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/tiles/images .gpu/tiles/masks
pins=$(.venv/bin/python -c "
from importlib.metadata import version
names = 'monai pytorch-ignite torchstain fire termcolor defusedxml openslide-python openslide-bin shapely'
cuda13 = {'cucim-cu13': 'cucim-cu12', 'nvidia-nvimgcodec-cu13': 'nvidia-nvimgcodec-cu12'}  # same release, CUDA 13
print(' '.join([f'{n}=={version(n)}' for n in names.split()] + [f'{n}=={version(m)}' for n, m in cuda13.items()]))")
# nvJPEG, which nvImageCodec loads to decode tiles on the GPU (read_device cuda)
# shellcheck disable=SC2086
.venv/bin/python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  -d .gpu/wheels --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform manylinux_2_5_x86_64 $pins "nvidia-nvjpeg>=13,<14"
for name in 10692 10693 10694 10695 10696 10697 10698 10699; do  # the demo tiles
  cp "$TILES/images/$name.jpg" .gpu/tiles/images/ && cp "$TILES/masks/$name.jpg" .gpu/tiles/masks/
done
du -sh .gpu
