"""CAMELYON16's own evaluation: lesions found by size, false regions, slide-level AUC from a reference CSV."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from scripts.annotations import LesionAnnotation
from scripts.lesions import FROC_FP_RATES, froc_curve, froc_summary, lesion_detection, lesion_raster, slide_level
from scripts.reference import read_reference
from scripts.slide_truth import SlideResult

STRIDE, MPP0, CELLS = 96, 0.972, 64  # a 64 x 64-patch slide of ~6 x 6 mm


def square(x_mm: float, y_mm: float, side_mm: float) -> np.ndarray:
    x, y, side = (v * 1000 / MPP0 for v in (x_mm, y_mm, side_mm))
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]])


def slide(name: str, lesions: list[np.ndarray], hot: list[tuple[slice, slice]]) -> SlideResult:
    """Tissue everywhere at z 0, with the grid cells of ``hot`` at z 3."""
    z_map = np.zeros((CELLS, CELLS), np.float32)
    for rows, cols in hot:
        z_map[rows, cols] = 3.0
    grid = {"size": STRIDE, "stride": STRIDE, "mpp0": MPP0, "thumbnail_downsample": 32.0}
    annotation = LesionAnnotation(tumour=lesions) if lesions else None
    truth = annotation.rasterise((192, 192), 32.0) if annotation else np.zeros((192, 192), bool)
    empty = pd.DataFrame(columns=["x", "y", "score", "z", "label"])
    return SlideResult(name, empty, z_map, grid, truth, np.ones_like(truth), np.zeros((192, 192, 3)), annotation)


def cells(x_mm: float, y_mm: float, side_mm: float) -> tuple[slice, slice]:
    first = lambda mm: int(mm * 1000 / MPP0 // STRIDE)  # noqa: E731
    return slice(first(y_mm), first(y_mm + side_mm) + 1), slice(first(x_mm), first(x_mm + side_mm) + 1)


@pytest.fixture
def cohort() -> list[SlideResult]:
    """test_001: a 2.5 mm (macro) lesion that is called, a 0.6 mm (micro) one that is not, a 0.1 mm ITC and one false
    region; test_002: tumour-free with two false regions; test_003: tumour-free, nothing called."""
    lesions = [square(0.5, 0.5, 2.5), square(4.5, 4.5, 0.6), square(4.5, 0.5, 0.1)]
    false_region = (slice(48, 50), slice(5, 7))  # 2 x 2 patches, far from the lesions
    return [
        slide("test_001", lesions, [cells(0.5, 0.5, 2.5), false_region]),
        slide("test_002", [], [false_region, (slice(10, 11), slice(43, 44))]),
        slide("test_003", [], []),
    ]


def test_lesions_found_by_size_and_false_regions_per_slide(cohort):
    rasters = [lesion_raster(s) for s in cohort]
    totals, table = lesion_detection(cohort, rasters, z_threshold=2.0, min_region_tiles=1)
    assert list(table["size"]) == ["macro", "micro"]  # the ITC is neither found nor missed
    assert list(table["found"]) == [True, False]
    assert totals["lesion_sensitivity"] == 0.5
    assert totals["by_size"] == {
        "macro": {"n_lesions": 1, "sensitivity": 1.0},
        "micro": {"n_lesions": 1, "sensitivity": 0.0},
    }
    assert totals["false_regions"] == {"test_001": 1, "test_002": 2, "test_003": 0}
    assert totals["false_regions_per_slide"] == 1.0 and totals["false_regions_per_tumour_free_slide"] == 1.0
    curve = froc_curve(cohort, rasters)
    froc = froc_summary(curve)
    assert froc["n_lesions"] == 2 and 0.0 < froc["score"] <= 0.5  # the micro-metastasis is never detected
    # the score is the mean of the operating points the report marks on the curve
    assert len(froc["sensitivity_at_thresholds"]) == len(FROC_FP_RATES)
    assert np.mean(froc["sensitivity_at_thresholds"]) == pytest.approx(froc["score"])
    assert max(curve.sensitivity) <= 0.5 and froc_summary(froc_curve(cohort[1:], rasters[1:]))["score"] is None


def test_slide_level_auc_from_annotations_and_from_the_challenge_reference(cohort, tmp_path, caplog):
    rasters = [lesion_raster(s) for s in cohort]
    totals, table = slide_level(cohort, rasters, None)
    assert list(table["tumour"]) == [1, 0, 0] and list(table["size"]) == ["macro", "", ""]
    # only test_001's called cluster fills a 3 x 3 window at z 3; test_002's small false regions average lower
    assert table["score"].iloc[0] == pytest.approx(3.0) and table["score"].iloc[2] == 0.0
    assert totals["auc"] == 1.0 and totals["by_size"] == {"macro": 1.0, "micro": None}

    reference = tmp_path / "reference.csv"
    reference.write_text("Test_001,Tumor,Micro\ntest_002,Normal,\ntest_003,Tumor,Macro,extra\ntest_004,Normal,\n")
    with caplog.at_level(logging.WARNING):
        totals, table = slide_level(cohort, rasters, reference)
    assert "lists 1 slide(s) not in this cohort (test_004)" in caplog.text
    assert list(table["tumour"]) == [1, 0, 1] and list(table["size"]) == ["micro", "", "macro"]
    assert totals["auc"] == 0.5 and totals["by_size"] == {"macro": 0.0, "micro": 1.0}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("test_001,Tumour,Macro\ntest_002,Benign,\n", r"line 2: 'Benign' / '' for test_002; the class must be Tumor"),
        ("test_001,Tumor,Large\n", r"line 1: 'Tumor' / 'Large' for test_001"),
        ("test_009,Normal,\n", r"has no row for test_001, test_002, test_003"),
    ],
)
def test_a_reference_csv_that_does_not_fit_is_one_line(cohort, tmp_path, content, message):
    reference = tmp_path / "reference.csv"
    reference.write_text(content)
    with pytest.raises(ValueError, match=message) as refused:
        slide_level(cohort, [lesion_raster(s) for s in cohort], reference)
    assert str(reference) in str(refused.value) and "\n" not in str(refused.value)


def test_a_reference_header_row_is_skipped(tmp_path):
    reference = tmp_path / "reference.csv"
    reference.write_text("image,class,type\ntest_001.tif,Tumor,Macro\n")
    assert read_reference(reference).to_dict("records") == [{"slide": "test_001", "tumour": 1, "size": "macro"}]
