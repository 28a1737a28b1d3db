"""Slide labels from the challenge's ``reference.csv`` (``test_001,Tumor,Macro``; ``Normal`` rows have no size), as
spreadsheets save it."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .wsi import SLIDE_SUFFIXES

logger = logging.getLogger(__name__)

REFERENCE_CLASSES = {"tumor": 1, "tumour": 1, "normal": 0}
REFERENCE_SIZES = {"macro": "macro", "micro": "micro", "itc": "itc", "": "", "none": "", "nan": ""}


def read_text_any_utf(path: Path, what: str) -> str:
    """A text file in UTF-8 (with or without a BOM) or UTF-16 (with its BOM), as spreadsheets save CSV."""
    raw = path.read_bytes()
    boms = {codecs.BOM_UTF8: "utf-8-sig", codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16"}
    encoding = next((name for bom, name in boms.items() if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {path} is not UTF-8 or UTF-16 text (byte {error.start}); save it as UTF-8 CSV."
        ) from None


def id_key(slide_id: str) -> str:
    """What two spellings of one slide id share: NFC form (a file name from macOS is NFD) and letter case (ids that
    differ in case alone are one folder on a case-insensitive file system, and refused as a cohort)."""
    return unicodedata.normalize("NFC", slide_id).casefold()


def reference_id(name: str) -> str:
    """A reference row's slide id: the name less a slide file suffix (``test_001.tif``), never less anything else
    (``case.01`` is its own id)."""
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in SLIDE_SUFFIXES else name


def read_reference(path: str | Path) -> pd.DataFrame:
    """CAMELYON16's ``reference.csv`` (no header: slide, ``Tumor`` / ``Normal``, ``Macro`` / ``Micro`` / empty, ...;
    a header row is skipped) as columns ``slide``, ``tumour`` (0/1) and ``size``; labels in any letter case; a slide
    listed twice is an error, whether or not the rows agree."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference_csv {path} not found.")
    text = read_text_any_utf(path, "reference_csv")
    # rows of any length: the challenge's file is not a rectangle
    lines = [(k, values) for k, values in enumerate(csv.reader(io.StringIO(text)), 1) if any(v.strip() for v in values)]
    rows, seen = [], {}
    for line, values in lines:
        if len(values) < 2:
            raise ValueError(f"reference_csv {path}, line {line}: expected 'slide,Tumor|Normal[,Macro|Micro]'.")
        slide, label = reference_id(values[0].strip()), values[1].strip()
        size = values[2].strip() if len(values) > 2 else ""
        if line == lines[0][0] and label.casefold() not in REFERENCE_CLASSES:
            continue  # a header row
        if label.casefold() not in REFERENCE_CLASSES or size.casefold() not in REFERENCE_SIZES:
            raise ValueError(
                f"reference_csv {path}, line {line}: {label!r} / {size!r} for {slide}; the class must be Tumor or "
                "Normal and the size Macro, Micro or empty."
            )
        if id_key(slide) in seen:
            raise ValueError(
                f"reference_csv {path}: {slide} is listed on line {seen[id_key(slide)]} and again on line {line}; "
                "keep one row a slide."
            )
        seen[id_key(slide)] = line
        rows.append({"slide": slide, "tumour": REFERENCE_CLASSES[label.casefold()],
                     "size": REFERENCE_SIZES[size.casefold()]})  # fmt: skip
    return pd.DataFrame(rows, columns=["slide", "tumour", "size"])


def reference_labels(reference_csv: str | Path, slide_ids: Sequence[str], warn: bool = True) -> dict[str, dict]:
    """Each slide's row of ``reference_csv``; a slide it does not list is a one-line error, a listed slide not in the
    cohort a warning (with ``warn``)."""
    reference = read_reference(reference_csv)
    by_id = {id_key(slide): row for slide, row in zip(reference["slide"], reference.to_dict("records"), strict=True)}
    missing = [s for s in slide_ids if id_key(s) not in by_id]
    if missing:
        raise ValueError(
            f"reference_csv {reference_csv} has no row for {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; add them, or score a cohort the reference covers."
        )
    evaluated = {id_key(s) for s in slide_ids}
    unscored = [slide for slide in reference["slide"] if id_key(slide) not in evaluated]
    if unscored and warn:
        logger.warning(
            "reference_csv %s lists %d slide(s) not in this cohort (%s%s); Task 1 covers the %d scored.",
            reference_csv, len(unscored), ", ".join(unscored[:5]), " ..." if len(unscored) > 5 else "", len(slide_ids),
        )  # fmt: skip
    return {s: by_id[id_key(s)] for s in slide_ids}
