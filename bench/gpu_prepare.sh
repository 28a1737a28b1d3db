#!/usr/bin/env bash
# Run here, before a GPU check: puts in .gpu/ (git-ignored, carried to the device machine) the wheels its image lacks,
# for its Python 3.12, at this venv's versions, and 8 of the real tiles. cuCIM goes without CuPy and nvImageCodec,
# as `make` installs it: slides are decoded on the CPU. The carried tree must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
TILES=${TILES:-../shared/data/camelyon16_tiles}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/tiles/images .gpu/tiles/masks
pins=$(.venv/bin/python -c "
from importlib.metadata import version
names = 'monai pytorch-ignite torchstain fire termcolor defusedxml openslide-python openslide-bin shapely'
print(' '.join([f'{n}=={version(n)}' for n in names.split()] + [f'cucim-cu13=={version(\"cucim-cu12\")}']))")
# shellcheck disable=SC2086
.venv/bin/python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
  -d .gpu/wheels --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform manylinux_2_5_x86_64 $pins
for name in 10692 10693 10694 10695 10696 10697 10698 10699; do  # the demo tiles
  cp "$TILES/images/$name.jpg" .gpu/tiles/images/ && cp "$TILES/masks/$name.jpg" .gpu/tiles/masks/
done
mkdir -p .gpu/pcam_normals/images  # 600 of the real PCam normals (6 MB): the PCam-layout training bench repeats them
find "${PCAM:-../shared/data/pcam_normals}/images" -name '*.jpg' | sort | head -600 | xargs cp -t .gpu/pcam_normals/images
du -sh .gpu
