"""Slide access by physical resolution: reader choice, level selection by µm/px, and the tissue patch grid."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from monai.data import WSIReader
from monai.utils import OptionalImportError
from skimage.transform import resize
from tifffile.tifffile import svs_description_metadata

from .tissue import tissue_mask

logger = logging.getLogger(__name__)

READERS = ("cuCIM", "OpenSlide", "tifffile")
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif")  # formats stored as TIFF files
MPP_TOLERANCE = 0.1
MPP_RANGE = (0.05, 50.0)  # plausible µm per pixel of a slide level: 0 (a missing tag), negatives or 1,000 are not
MASK_MAX_SIDE = 4096
# A read level and level 0 averaged down to it correlate at > 0.9 on tissue (JPEG noise aside); a blank or flipped
# level at ~0. Where level 0 is flat, mean grey levels (0-255) must agree instead.
LEVEL_MIN_CORRELATION = 0.5
LEVEL_FLAT_STD = 2.0
LEVEL_MAX_MEAN_DIFFERENCE = 30.0
# The thumbnail is one read of a whole level; a slide whose coarsest level is bigger than this has no usable pyramid
# (a flat 20k x 20k TIFF needed 10.8 GB to read and crashed cuCIM).
THUMBNAIL_MAX_PIXELS = 8192 * 8192
FILE_SIGNATURES = {
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "BigTIFF", b"MM\x00+": "BigTIFF", b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive",
    b"\x1f\x8b": "a gzip archive",
}  # fmt: skip


DATALIST_KEYS = ("testing", "training", "validation", "data")


class SlideUnusableError(ValueError):
    """The file opens, but what it records (resolution, pyramid levels) makes it unusable: any reader says the same."""


def slide_id(path: str | Path) -> str:
    """A slide's output id: its file name without the suffix."""
    return Path(path).stem


def _datalist_items(path: Path) -> list[object]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"datalist {path} is not valid JSON: {error.msg} at line {error.lineno}.") from None
    if isinstance(content, dict):
        key = next((k for k in DATALIST_KEYS if k in content), None)
        if key is None:
            raise KeyError(f"datalist {path} has none of the keys {list(DATALIST_KEYS)}.")
        content = content[key]
    if not isinstance(content, list):
        raise ValueError(f"datalist {path}: expected a list of slides, got {type(content).__name__}.")
    paths = []
    for k, item in enumerate(content):
        image = item.get("image") if isinstance(item, dict) else item
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"datalist {path}: entry {k} ({json.dumps(item)[:80]}) has no 'image' path.")
        paths.append(image)
    return paths


def _csv_items(path: Path) -> list[str]:
    """The ``image`` column; a CSV whose first row is already a slide path has no header, and its first column is
    taken whole (reading that row as a header would silently drop the first slide)."""
    first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    headerless = Path(str(first.iloc[0, 0])).suffix.lower() in SLIDE_SUFFIXES if len(first) else False
    table = pd.read_csv(path, header=None if headerless else 0, dtype=str, keep_default_na=False)
    if headerless:
        column = table.columns[0]
    elif "image" in table.columns:
        column = "image"
    else:
        raise ValueError(
            f"datalist {path}: no 'image' column (header {list(table.columns)}) and the first row is no slide path; "
            "name the slide column 'image'."
        )
    paths = table[column].tolist()
    for k, image in enumerate(paths):
        if not image.strip():
            raise ValueError(f"datalist {path}: line {k + (1 if headerless else 2)} has an empty image cell.")
    return paths


def read_datalist(path: str | Path) -> list[str]:
    """Slide paths from a JSON datalist or a CSV list.

    JSON: a plain list, or MONAI style ``{"testing" | "training" | "validation" | "data": [{"image": ...}]}`` (the
    first of those keys present). CSV: the ``image`` column, or a headerless list of paths. Relative paths are taken
    relative to the datalist's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} not found.")
    paths = _datalist_items(path) if path.suffix.lower() == ".json" else _csv_items(path)
    slides = [str(p if Path(p).is_absolute() else path.parent / p) for p in paths]
    for entry, slide in zip(paths, slides, strict=True):
        if entry != entry.strip() and not Path(slide).exists():
            raise ValueError(f"datalist {path}: the path {entry!r} has leading or trailing spaces; remove them.")
    return slides


def check_slide_file(path: str | Path) -> None:
    """Say what a file really is before a reader tries it, for the errors readers word as "unsupported or missing".

    Missing, empty and unreadable files, and TIFF-based suffixes (.svs, .ndpi, ...) on a file that is no TIFF (a PNG
    renamed, a text file) get their own cause.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a slide file; list the slide file itself.")
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(
            f"{path}: a symbolic link to {os.readlink(path)} that leads to no file (its target is missing, or the link "
            "loops); fix or remove the link."
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); copy it again.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror}).") from None
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return
    kind = next((name for magic, name in FILE_SIGNATURES.items() if head.startswith(magic)), None)
    if kind in ("TIFF", "BigTIFF"):
        _check_tiff_complete(path)
        return
    if kind is None:
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) / len(head)
        kind = "a text file" if printable > 0.95 else "of unknown type"
    raise ValueError(f"{path}: not a slide: a {path.suffix} file must be a TIFF, but this one is {kind}.")


def _check_tiff_complete(path: Path) -> None:
    """Refuse a TIFF whose structure or image data stops short: a copy or download cut off (readers only say
    "unsupported or missing image file")."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            end = max(
                (int(offset) + int(count) for page in tif.pages for offset, count in
                 zip(page.dataoffsets, page.databytecounts, strict=False)),
                default=0,
            )  # fmt: skip
    except (tifffile.TiffFileError, ValueError, IndexError, struct.error) as error:
        raise ValueError(f"{path}: the TIFF is truncated or damaged ({error}); copy the file again.") from None
    if end > size:
        raise ValueError(
            f"{path}: truncated: its image data runs to byte {end:,} but the file ends at byte {size:,}; copy the "
            "file again."
        )


def find_slides(dataset_dir: str | Path | None, datalist: str | Path | None = None) -> list[str]:
    """The slides of ``datalist`` when given, else every file with a slide suffix directly in ``dataset_dir``."""
    if datalist:
        return read_datalist(datalist)
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir!r} is not a folder; pass --dataset_dir DIR or --datalist FILE."
        )
    slides = sorted(str(p) for p in Path(dataset_dir).iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
    if not slides:
        raise FileNotFoundError(f"dataset_dir {dataset_dir} holds no slide file ({' '.join(SLIDE_SUFFIXES)}).")
    return slides


def make_reader(backend: str) -> WSIReader:
    """A MONAI ``WSIReader`` for one of ``READERS`` (case-insensitive)."""
    if backend.lower() not in {name.lower() for name in READERS}:
        raise ValueError(f"wsi_reader must be one of {list(READERS)}, got {backend!r}.")
    try:
        return WSIReader(backend=backend.lower())
    except OptionalImportError:
        fix = "pip install --no-deps cucim-cu12" if backend.lower() == "cucim" else f"pip install {backend.lower()}"
        raise ImportError(f"wsi_reader {backend} is not installed: {fix}, or pass --wsi_reader OpenSlide.") from None


def _resolution_tag_is_set(path: str | Path) -> bool:
    """Whether a TIFF's first page has a non-zero resolution in a physical unit (True for files that are no TIFF:
    not ours to judge). Writers such as tifffile store 1/1 with unit NONE when given no resolution."""
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            resolution, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
            if resolution is None or unit is not None and unit.value == tifffile.RESUNIT.NONE:
                return False
            return resolution.value[0] > 0 and resolution.value[1] > 0
    except (tifffile.TiffFileError, OSError, IndexError):
        return True


def slide_mpp(reader: WSIReader, wsi, path: str | Path, assume_mpp: float | None = None) -> float:
    """Level-0 µm per pixel, or ``assume_mpp`` when the file records none.

    cuCIM reports 1.0 µm/px both for a TIFF without resolution tags (with empty units) and for one whose tag is 0;
    neither is trusted: the tags are checked in the file itself, because every physical size downstream would
    silently be wrong. Values outside ``MPP_RANGE`` (negative, 1,000 µm/px) are no usable resolution either.
    """
    mpp: float | None = None
    with contextlib.suppress(ValueError, KeyError, TypeError, ZeroDivisionError):
        mpp = float(reader.get_mpp(wsi, 0)[0])
    if mpp is None and getattr(wsi, "is_svs", False):  # tifffile: Aperio keeps MPP in the description, not in tags
        with contextlib.suppress(ValueError, KeyError, TypeError):
            mpp = float(svs_description_metadata(wsi.pages[0].description)["MPP"])
    metadata = getattr(wsi, "metadata", None)
    if isinstance(metadata, dict) and "aperio" not in metadata and not _resolution_tag_is_set(path):
        mpp = None
    if mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return mpp
    recorded = "no resolution" if mpp is None else f"no usable resolution ({mpp:g} µm/px recorded)"
    if mpp is None and (written := _decimal_comma_mpp(path)):
        recorded = f"MPP = {written} with a decimal comma, which readers cannot parse,"
        fix = f"--assume_mpp {written.replace(',', '.')}"
    else:
        fix = f"--assume_mpp <µm per level-0 pixel, {MPP_RANGE[0]} to {MPP_RANGE[1]}>"
    if assume_mpp is not None:
        logger.warning("%s records %s; using assume_mpp=%s µm/px.", path, recorded, assume_mpp)
        return float(assume_mpp)
    raise SlideUnusableError(f"{path}: {recorded} in the file; pass {fix} to read it.")


def _decimal_comma_mpp(path: str | Path) -> str | None:
    """An Aperio ``MPP = 0,4990`` (a scanner set to a decimal-comma locale) as written, or None."""
    with contextlib.suppress(tifffile.TiffFileError, OSError, IndexError), tifffile.TiffFile(path) as tif:
        found = re.search(r"\|\s*MPP\s*=\s*(\d+,\d+)\s*(\||$)", tif.pages[0].description or "")
        return found.group(1) if found else None
    return None


@dataclass(frozen=True)
class PatchGeometry:
    """Where and how big one model patch is read on a slide."""

    level: int  # pyramid level the patch is read from
    read_size: int  # patch side read at ``level`` (resized to ``patch_size`` when it differs)
    patch_size: int  # patch side the model sees
    size0: int  # patch side in level-0 pixels
    stride0: int  # grid stride in level-0 pixels
    mpp0: float  # level-0 µm per pixel
    level_mpp: float
    downsample: float = 1.0  # level-0 pixels per pixel of ``level``


def select_geometry(
    reader: WSIReader,
    wsi,
    path: str | Path,
    target_mpp: float,
    patch_size: int,
    stride: int,
    assume_mpp: float | None = None,
) -> PatchGeometry:
    """Choose the level by physical size, not index.

    The level whose µm/px is closest to ``target_mpp`` is used if within 10 %; otherwise the next finer level. The
    read size is scaled so a patch always covers ``patch_size * target_mpp`` µm (a 0.5 µm/px scan is read at its
    1.0 µm/px level, 93 px, resized to 96).
    """
    mpp0 = slide_mpp(reader, wsi, path, assume_mpp)
    downsamples = np.array([reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))])
    level_mpps = mpp0 * downsamples
    level = int(np.argmin(np.abs(level_mpps - target_mpp)))
    if abs(level_mpps[level] - target_mpp) > MPP_TOLERANCE * target_mpp:
        finer = np.flatnonzero(level_mpps <= target_mpp)
        level = int(finer[np.argmax(level_mpps[finer])]) if finer.size else 0
    scale = target_mpp / level_mpps[level]
    read_size = max(1, round(patch_size * scale))
    size0 = round(read_size * downsamples[level])
    return PatchGeometry(
        level=level,
        read_size=read_size,
        patch_size=patch_size,
        size0=size0,
        stride0=max(1, round(size0 * stride / patch_size)),
        mpp0=mpp0,
        level_mpp=float(level_mpps[level]),
        downsample=float(downsamples[level]),
    )


def _mask_level(reader: WSIReader, wsi) -> int:
    """The finest level whose long side fits ``MASK_MAX_SIDE`` (the coarsest one if none does)."""
    n = reader.get_level_count(wsi)
    for level in range(n):
        if max(reader.get_size(wsi, level)) <= MASK_MAX_SIDE:
            return level
    return n - 1


def read_thumbnail(reader: WSIReader, wsi, path: str | Path) -> tuple[np.ndarray, float]:
    """An HWC uint8 RGB image of the whole slide at a low-resolution level, and that level's downsample.

    A slide without a level small enough to read whole is refused before anything is read.
    """
    level = _mask_level(reader, wsi)
    height, width = (int(v) for v in reader.get_size(wsi, level))
    if height * width > THUMBNAIL_MAX_PIXELS:
        levels = reader.get_level_count(wsi)
        raise SlideUnusableError(
            f"{path}: no pyramid level small enough to read whole (the coarsest of {levels} level(s) is {width} x "
            f"{height} px); convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)."
        )
    image, _ = reader.get_data(wsi, level=level)
    return np.moveaxis(np.asarray(image)[:3], 0, -1), float(reader.get_downsample_ratio(wsi, level))


def tissue_grid(
    mask: np.ndarray, mask_downsample: float, slide_size0: tuple[int, int], geometry: PatchGeometry, min_tissue: float
) -> np.ndarray:
    """Top-left level-0 (row, col), grid (i, j) and tissue fraction of every grid patch with enough tissue.

    Returns an (N, 5) float array: row0, col0, i, j, tissue_fraction. Fractions come from a summed-area table of the
    low-resolution mask, so the whole grid costs one pass whatever the slide size.
    """
    height0, width0 = slide_size0
    n_rows = (height0 - geometry.size0) // geometry.stride0 + 1
    n_cols = (width0 - geometry.size0) // geometry.stride0 + 1
    if n_rows <= 0 or n_cols <= 0:
        return np.zeros((0, 5))
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    table[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    starts = np.arange(max(n_rows, n_cols)) * geometry.stride0

    def bounds(start0: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.clip(np.floor(start0 / mask_downsample), 0, limit - 1).astype(int)
        hi = np.clip(np.ceil((start0 + geometry.size0) / mask_downsample), lo + 1, limit).astype(int)
        return lo, hi

    r0, r1 = bounds(starts[:n_rows], mask.shape[0])
    c0, c1 = bounds(starts[:n_cols], mask.shape[1])
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    inside = table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0]
    fraction = inside / area
    i, j = np.nonzero(fraction >= min_tissue)
    return np.stack([starts[i], starts[j], i, j, fraction[i, j]], axis=1)


@dataclass(frozen=True)
class TissueGrid:
    """A slide's tissue patches on its regular grid, as arrays: a CAMELYON16 slide has ~45,000, and a dict for each
    took 0.4 s to build and as long again to pass from the process that reads the slide's header."""

    corners: np.ndarray  # (N, 2) int: level-0 (row, col) of each patch's top-left corner
    cells: np.ndarray  # (N, 2) int: (i, j) on the grid
    tissue_fraction: np.ndarray  # (N,) float

    def __len__(self) -> int:
        return len(self.cells)

    def samples(self, path: str | Path, geometry: PatchGeometry) -> list[dict]:
        """One MONAI ``PatchWSIDataset`` sample per patch (``location`` being its level-0 top-left corner)."""
        size = [geometry.read_size, geometry.read_size]
        return [
            {"image": str(path), "location": [int(r), int(c)], "size": size, "level": geometry.level}
            for r, c in self.corners
        ]


def check_read_level(reader: WSIReader, wsi, path: str | Path, geometry: PatchGeometry, patches: TissueGrid) -> None:
    """Refuse a slide whose read level does not show what level 0 shows: a level written blank, shifted or upside
    down by a broken converter would be scored as if it were the tissue.

    One region around the tissue-richest patch is read at the read level and at level 0; level 0, averaged down to
    the read level, must correlate with it (grey levels; by mean brightness where level 0 is flat there). Costs one
    read of two patches' area, on slides not read at level 0 only.
    """
    if geometry.level == 0 or not len(patches):
        return
    height0, width0 = (int(v) for v in reader.get_size(wsi, 0))
    side = min(2 * geometry.read_size, int(min(height0, width0) / geometry.downsample))
    side0 = round(side * geometry.downsample)
    row0, col0 = patches.corners[int(np.argmax(patches.tissue_fraction))]
    row0, col0 = int(max(0, min(row0, height0 - side0))), int(max(0, min(col0, width0 - side0)))
    coarse, _ = reader.get_data(wsi, location=(row0, col0), size=(side, side), level=geometry.level)
    fine, _ = reader.get_data(wsi, location=(row0, col0), size=(side0, side0), level=0)
    coarse = np.asarray(coarse, dtype=np.float32)[:3].mean(0)
    fine = resize(np.asarray(fine, dtype=np.float32)[:3].mean(0), coarse.shape, anti_aliasing=True)
    if fine.std() < LEVEL_FLAT_STD:
        agree = abs(float(fine.mean() - coarse.mean())) <= LEVEL_MAX_MEAN_DIFFERENCE
        found = f"mean grey {coarse.mean():.0f} where level 0 has {fine.mean():.0f}"
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # a blank level has no spread: correlation 0
            correlation = float(np.nan_to_num(np.corrcoef(fine.ravel(), coarse.ravel())[0, 1]))
        agree = correlation >= LEVEL_MIN_CORRELATION
        found = f"correlation {correlation:.2f} with level 0"
    if not agree:
        raise SlideUnusableError(
            f"{path}: pyramid level {geometry.level} does not show what level 0 shows at level-0 (x {col0}, y {row0}) "
            f"({found}: a blank, shifted or flipped level); re-export the slide's pyramid (e.g. vips tiffsave --tile "
            "--pyramid)."
        )


def slide_patches(
    path: str | Path,
    reader: WSIReader,
    target_mpp: float,
    patch_size: int,
    stride: int,
    min_tissue: float,
    assume_mpp: float | None = None,
) -> tuple[TissueGrid, PatchGeometry, dict]:
    """The tissue patches of one slide on a regular grid, the geometry they are read with, and grid facts (shape,
    thumbnail, tissue mask and its downsample) for the outputs."""
    wsi = reader.read(str(path))
    geometry = select_geometry(reader, wsi, path, target_mpp, patch_size, stride, assume_mpp)
    thumbnail, mask_downsample = read_thumbnail(reader, wsi, path)
    mask = tissue_mask(thumbnail)
    size0 = tuple(int(s) for s in reader.get_size(wsi, 0))
    grid = tissue_grid(mask, mask_downsample, size0, geometry, min_tissue)
    patches = TissueGrid(grid[:, :2].astype(np.int64), grid[:, 2:4].astype(np.int64), grid[:, 4])
    check_read_level(reader, wsi, path, geometry, patches)
    facts = {
        "shape": (
            max(0, (size0[0] - geometry.size0) // geometry.stride0 + 1),
            max(0, (size0[1] - geometry.size0) // geometry.stride0 + 1),
        ),
        "size0": size0,
        "thumbnail": thumbnail,
        "mask": mask,
        "mask_downsample": mask_downsample,
    }
    return patches, geometry, facts


def block_samples(path: str | Path, patches: TissueGrid, geometry: PatchGeometry, block: int) -> list[dict]:
    """Group grid patches into reads of up to ``block`` x ``block`` neighbouring patches, for ``PatchWSIDataset``.

    A slide is stored in compressed tiles, and a reader decodes every tile a region touches: read one 96-px patch at
    a time and each tile is decoded again for every patch on it (cuCIM keeps no tile cache here, and MONAI reopens
    OpenSlide files for every read). One read per block decodes each tile about once. A block sample is the bounding
    box of its tissue patches; ``members`` lists ``[index in patches, row, col]`` of each patch inside it, at the
    read level (``SplitBlockd`` cuts them out). ``block`` 1 reads patch by patch.
    """
    keys = patches.cells // block
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # blocks in row-major order, patches in grid order within each
    starts = np.flatnonzero(np.r_[True, np.any(np.diff(keys[order], axis=0) != 0, axis=1)])
    blocks = []
    for members in np.split(order, starts[1:]):
        corners = patches.corners[members]
        top, left = corners.min(0)
        offsets = np.rint((corners - [top, left]) / geometry.downsample).astype(int)
        height, width = offsets.max(0) + geometry.read_size
        blocks.append(
            {"image": str(path), "location": [int(top), int(left)], "size": [int(height), int(width)],
             "level": geometry.level, "members": np.column_stack([members, offsets]).tolist()}
        )  # fmt: skip
    return blocks
