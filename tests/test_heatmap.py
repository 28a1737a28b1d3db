"""The heatmap overlay: the called regions outlined on their boundary, drawn only where regions were called."""

from __future__ import annotations

import numpy as np
from PIL import Image

from scripts.heatmap import CALLED_COLOUR, Outlined, outline, save_heatmap, scale_bar_mm
from scripts.regions import cells_on_image


def test_the_outline_sits_on_the_called_regions_boundary():
    cells = np.zeros((4, 6), bool)
    cells[1:3, 1:4] = True
    cells[3, 5] = True
    region = cells_on_image(cells, (40, 60), downsample=4.0, stride=40.0)  # a cell is 10 x 10 image pixels
    assert region.sum() == 7 * 100 and region[10:30, 10:40].all()
    edge = outline(region)
    outside = ~np.pad(region, 1)
    touches_outside = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
    assert edge.any() and not (edge & ~region).any()  # on the region, never beside it
    assert np.array_equal(edge, region & touches_outside)  # and every boundary pixel of it
    thick = outline(region, width=2)
    assert edge.sum() < thick.sum() and not (thick & ~region).any()


def test_the_scale_bar_is_a_round_length_within_a_fifth_of_the_width():
    assert scale_bar_mm(1000, px_mm=1000) == 0.2  # 1 mm wide: 0.2 mm is a fifth
    assert scale_bar_mm(1000, px_mm=10) == 10.0  # 100 mm wide


def test_the_outline_colour_appears_only_where_regions_were_called(tmp_path):
    thumbnail = np.full((96 * 4 // 8, 96 * 6 // 8, 3), 230, np.uint8)  # thumbnail_downsample 8
    z_map = np.zeros((4, 6), np.float32)
    counts = {}
    for name, called in (("none", np.zeros((4, 6), bool)), ("some", z_map == 0)):
        layers = [Outlined(called, 96.0, CALLED_COLOUR, name)]
        save_heatmap(tmp_path / f"{name}.png", thumbnail, 8.0, z_map, 96.0, 1.0, 2.0, layers, name)
        pixels = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB")).reshape(-1, 3).astype(int)
        vermillion = np.round(np.array(CALLED_COLOUR[:3]) * 255)
        counts[name] = int((np.abs(pixels - vermillion).sum(1) < 30).sum())
    # the legend and the threshold mark on the colour bar draw it too; an outlined region adds many more pixels
    assert counts["some"] > counts["none"] + 500


def test_after_evaluation_the_contours_sit_on_the_annotation_and_the_calls_are_judged_by_their_labels():
    import pandas as pd

    from scripts.evaluation_figures import judged_layers
    from scripts.slide_truth import SlideResult

    z = np.zeros((6, 6))
    z[1:3, 1:4] = 5.0  # 6 cells called
    truth = np.zeros((6, 6), bool)
    truth[1:4, 1:3] = True  # 6 tumour cells: 4 of them called
    rows, cols = np.nonzero(np.ones((6, 6), bool))
    patches = pd.DataFrame({"x": cols, "y": rows, "size0": 1, "score": z[rows, cols], "z": z[rows, cols],
                            "label": truth[rows, cols].astype(int)})  # fmt: skip
    info = {"stride": 1, "size": 1, "mpp0": 1.0, "thumbnail_downsample": 1.0}
    slide = SlideResult("s", patches, z, info, truth, np.ones_like(truth), np.zeros((6, 6, 3), np.uint8))
    tp, fp, fn, annotation = judged_layers(slide, 2.0, 1)
    assert (tp.mask.sum(), fp.mask.sum(), fn.mask.sum()) == (4, 2, 2)
    assert not (tp.mask & ~truth).any() and not (fp.mask & truth).any() and not (fn.mask & ~truth).any()
    contour = outline(annotation.mask)
    assert contour.any() and not (contour & ~truth).any()  # the annotation's contour pixels lie on the annotation
    assert tp.label == "TP: 4 patches" and annotation.label == "annotated tumour"
