"""Slide files and readers: finding and checking slides, the reader choice, a slide's µm/px and its thumbnail."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from monai.data import WSIReader
from monai.utils import OptionalImportError
from tifffile.tifffile import svs_description_metadata

logger = logging.getLogger(__name__)

READERS = ("cuCIM", "OpenSlide", "tifffile")
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif")  # formats stored as TIFF files
MPP_RANGE = (0.05, 50.0)  # plausible µm per pixel of a slide level: 0 (a missing tag), negatives or 1,000 are not
MASK_MAX_SIDE = 4096
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
        with _opened_tiff(path) as tif:
            _check_tiff_complete(path, tif)
            _check_tiff_pixels(path, tif)
        return
    if kind is None:
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) / len(head)
        kind = "a text file" if printable > 0.95 else "of unknown type"
    raise ValueError(f"{path}: not a slide: a {path.suffix} file must be a TIFF, but this one is {kind}.")


@contextlib.contextmanager
def _opened_tiff(path: Path) -> Iterator[tifffile.TiffFile]:
    """The TIFF parsed once for the checks below; a structure that cannot be parsed is a cut-off copy."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, IndexError, struct.error) as error:
        raise ValueError(f"{path}: the TIFF is truncated or damaged ({error}); copy the file again.") from None
    with tif:
        yield tif


def _check_tiff_complete(path: Path, tif: tifffile.TiffFile) -> None:
    """Refuse a TIFF whose structure or image data stops short: a copy or download cut off (readers only say
    "unsupported or missing image file")."""
    size = path.stat().st_size
    try:
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


FINGERPRINT_CHUNK = 1 << 16
FINGERPRINT_CHUNKS = 8


def slide_fingerprint(path: str | Path) -> dict:
    """What identifies a slide file's content, cheaply: its size and modification time and a SHA-256 of its first and
    last 64 KiB (the header and the directory) and of 64 KiB at six evenly spaced places (tile bytes), so that
    another slide copied over a finished one's path is scored again, without reading gigabytes."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    last = max(0, size - FINGERPRINT_CHUNK)
    with open(path, "rb") as handle:
        for k in range(FINGERPRINT_CHUNKS):
            handle.seek(k * last // (FINGERPRINT_CHUNKS - 1))
            digest.update(handle.read(FINGERPRINT_CHUNK))
    return {"size": size, "mtime_ns": path.stat().st_mtime_ns, "sha256": digest.hexdigest()}


def _check_tiff_pixels(path: Path, tif: tifffile.TiffFile) -> None:
    """Refuse a TIFF whose level 0 is not 8-bit RGB (or RGBA), and an Aperio file holding only its label or macro
    photograph: readers turn 16-bit samples into wrapped 8-bit ones and read a label as tissue, without a word."""
    with contextlib.suppress(tifffile.TiffFileError, OSError, IndexError):
        page = tif.pages[0]
        lines = (page.description or "").split("\n")
        image = lines[1].split()[0].lower() if lines[0].startswith("Aperio") and lines[1:2] and lines[1].split() else ""
        if image in ("label", "macro"):
            raise SlideUnusableError(
                f"{path}: holds only the slide's {image} photograph (its first image), no scanned tissue; export the "
                "full scan."
            )
        photometric = tifffile.PHOTOMETRIC(page.photometric).name
        rgb = photometric in ("RGB", "YCBCR") and page.samplesperpixel in (3, 4)
        if not (rgb and page.dtype == np.uint8):
            raise SlideUnusableError(
                f"{path}: its pixels are {page.bitspersample}-bit {photometric} with {page.samplesperpixel} "
                f"sample(s) ({page.dtype}); the bundle reads 8-bit RGB slides: convert it (e.g. vips colourspace "
                "srgb, then vips cast uchar)."
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


def _resolution_recorded(path: str | Path) -> bool:
    """Whether a TIFF records its level-0 resolution: an Aperio description with ``MPP``, or else a non-zero
    resolution tag in a physical unit (True for files that are no TIFF: not ours to judge). Readers fill the gap
    with 1.0 µm/px (cuCIM for a TIFF without tags, and for an Aperio file whose description has no MPP), and
    tifffile's writer stores 1/1 with unit NONE when given no resolution."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if (page.description or "").startswith("Aperio"):
                with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
                    return "MPP" in svs_description_metadata(page.description)
                return False
            resolution, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
            if resolution is None or unit is not None and unit.value == tifffile.RESUNIT.NONE:
                return False
            return resolution.value[0] > 0 and resolution.value[1] > 0
    except (tifffile.TiffFileError, OSError, IndexError):
        return True


def slide_mpp(reader: WSIReader, wsi, path: str | Path, assume_mpp: float | None = None) -> float:
    """Level-0 µm per pixel, or ``assume_mpp`` when the file records none.

    Readers report 1.0 µm/px for a TIFF without resolution tags, one whose tag is 0, or an Aperio file without MPP;
    none is trusted: the file itself is checked, whatever the reader, because every physical size downstream would
    silently be wrong. Values outside ``MPP_RANGE`` (negative, 1,000 µm/px) are no usable resolution either.
    """
    mpp: float | None = None
    with contextlib.suppress(ValueError, KeyError, TypeError, ZeroDivisionError):
        mpp = float(reader.get_mpp(wsi, 0)[0])
    if mpp is None and getattr(wsi, "is_svs", False):  # tifffile: Aperio keeps MPP in the description, not in tags
        with contextlib.suppress(ValueError, KeyError, TypeError):
            mpp = float(svs_description_metadata(wsi.pages[0].description)["MPP"])
    if not _resolution_recorded(path):  # whatever the reader made of it: a guess, not the file's
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


def thumbnail_level(reader: WSIReader, wsi, max_downsample: float = 1.0) -> int:
    """The level a slide's thumbnail (and tissue mask) is read at: the coarsest whose long side fits
    ``MASK_MAX_SIDE`` and whose downsample is at most ``max_downsample`` (a mask needs only a few pixels a patch, and
    a mask of a level-0 image of 11 Mpx cost more than scoring its patches); the finest level that fits if none is
    that fine, the coarsest level if none fits."""
    n = reader.get_level_count(wsi)
    fitting = [level for level in range(n) if max(reader.get_size(wsi, level)) <= MASK_MAX_SIDE]
    if not fitting:
        return n - 1
    fine_enough = [level for level in fitting if reader.get_downsample_ratio(wsi, level) <= max_downsample]
    return max(fine_enough) if fine_enough else min(fitting)


def read_thumbnail(reader: WSIReader, wsi, path: str | Path, level: int) -> tuple[np.ndarray, float]:
    """An HWC uint8 RGB image of the whole slide at ``level``, and that level's downsample.

    A slide without a level small enough to read whole is refused before anything is read.
    """
    height, width = (int(v) for v in reader.get_size(wsi, level))
    if height * width > THUMBNAIL_MAX_PIXELS:
        levels = reader.get_level_count(wsi)
        raise SlideUnusableError(
            f"{path}: no pyramid level small enough to read whole (the coarsest of {levels} level(s) is {width} x "
            f"{height} px); convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)."
        )
    image, _ = reader.get_data(wsi, level=level)
    return np.moveaxis(np.asarray(image)[:3], 0, -1), float(reader.get_downsample_ratio(wsi, level))
