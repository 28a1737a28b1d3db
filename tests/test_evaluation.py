"""Metrics against scikit-learn, the calibration sweep, label-blind calibration, and `run evaluate` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, roc_auc_score

from conftest import BUNDLE, REPO, TINY_NET, tissue_like
from scripts.annotations import LesionAnnotation
from scripts.evaluation import SLIDE_METRIC_COLUMNS, best_of, called_area, sweep
from scripts.metrics import overlap, pr_auc, roc_auc
from scripts.pyramid import write_pyramid
from scripts.regions import to_asap_xml, trace_regions
from scripts.slide_truth import SlideResult, patch_labels


@pytest.mark.parametrize("seed", range(5))
def test_scalar_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels * rng.uniform(0, 2)
    scores[:20] = scores[20]  # ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert pr_auc(scores, labels) == pytest.approx(average_precision_score(labels, scores))
    predicted = scores > 0.5
    result = overlap(predicted, labels)
    assert result["iou"] == pytest.approx(jaccard_score(labels, predicted))
    assert result["dice"] == pytest.approx(f1_score(labels, predicted))


def test_degenerate_metric_cases():
    assert np.isnan(roc_auc(np.arange(4.0), np.zeros(4, int)))
    assert overlap(np.zeros(5, bool), np.zeros(5, int))["iou"] == 1.0  # a clean tumour-free slide is perfect


def grid_slide(slide_id: str, z_map: np.ndarray, labels_map: np.ndarray) -> SlideResult:
    """A slide on a 1-px grid whose patch labels are given directly."""
    rows, cols = np.nonzero(np.isfinite(z_map))
    z = z_map[rows, cols]
    patches = pd.DataFrame({"x": cols, "y": rows, "size0": 1, "score": z, "z": z, "label": labels_map[rows, cols]})
    grid = {"stride": 1, "size": 1, "mpp0": 1.0, "thumbnail_downsample": 1.0}
    tissue = np.isfinite(z_map)
    return SlideResult(slide_id, patches, z_map, grid, labels_map > 0, tissue, np.zeros((*z_map.shape, 3), np.uint8))


def test_called_area_is_the_pixel_overlap_of_the_called_cells_with_the_annotation():
    z = np.zeros((6, 6))
    z[1:3, 1:4] = 5.0  # 6 cells called
    truth = np.zeros((6, 6), int)
    truth[1:3, 1:3] = 1  # 4 tumour pixels, all inside the call
    truth[5, 5] = 1  # and one missed
    assert called_area([grid_slide("s", z, truth)], 2.0, 1) == {"pixel_recall": 4 / 5, "pixel_precision": 4 / 6}
    assert called_area([grid_slide("s", np.zeros((6, 6)), truth)], 2.0, 1)["pixel_precision"] is None


def planted(seed: int, shift: float) -> SlideResult:
    rng = np.random.default_rng(seed)
    labels = np.zeros((20, 20), int)
    labels[5:12, 6:14] = 1
    z = rng.normal(size=(20, 20)) * 0.3 + labels * shift
    return grid_slide(f"s{seed}", z, labels)


def test_sweep_finds_the_known_optimum():
    slides = [planted(k, 3.0) for k in range(3)]
    table = sweep(slides, np.linspace(-3, 5, 81), [1, 5])
    best = best_of(table)
    assert best["mean_iou"] == pytest.approx(1.0)
    assert 0.9 < best["z_threshold"] < 2.1  # between the noise (±0.9) and the planted lesion (3 ± 0.9)


def test_calibration_does_not_depend_on_test_labels():
    calibration_slides = [planted(k, 3.0) for k in range(3)]
    chosen = best_of(sweep(calibration_slides, np.linspace(-3, 5, 100), [1, 2, 3, 5, 8]))
    test = planted(10, 3.0)
    permuted = grid_slide("p", test.z_map, np.random.default_rng(0).permutation(test.truth.ravel()).reshape(20, 20))
    threshold, tiles = chosen["z_threshold"], int(chosen["min_region_tiles"])
    # the evaluated threshold is the calibrated one whatever the test labels; only the score against them moves
    original = overlap(test.predict(threshold, tiles), test.patches["label"].to_numpy())
    shuffled = overlap(permuted.predict(threshold, tiles), permuted.patches["label"].to_numpy())
    assert np.array_equal(test.predict(threshold, tiles), permuted.predict(threshold, tiles))
    assert original["iou"] > 0.9 > shuffled["iou"]


def test_pcam_centre_rule_and_fraction_rule():
    annotation = LesionAnnotation(tumour=[np.array([[0, 0], [40, 0], [40, 96], [0, 96]], float)])
    patches = pd.DataFrame({"x": [0, 96], "y": [0, 0], "size0": 96})
    # tumour covers x < 40 of the first patch: 42 % of it, and reaches into its central third (x 32..64)
    assert list(patch_labels(annotation, patches, "centre")) == [1, 0]
    assert list(patch_labels(annotation, patches, "fraction", 0.5)) == [0, 0]
    assert list(patch_labels(annotation, patches, "fraction", 0.4)) == [1, 0]


def test_run_evaluate_on_a_slide_with_a_planted_anomaly(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(3)
    image = tissue_like(rng, (960, 1152))
    image[288:672, 384:768] = rng.integers(0, 256, size=(384, 384, 3))  # a harsh, saturated foreign texture
    slides = tmp_path / "slides"
    slides.mkdir()
    write_pyramid(slides / "planted.tif", image, 0.972, levels=2)
    truth = np.zeros((960, 1152), bool)
    truth[288:672, 384:768] = True
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "planted.xml").write_text(to_asap_xml(trace_regions(truth, None, pitch=1.0)))

    def run(workflow: str, output, *extra: str, succeeds: bool = True) -> str:
        command = [
            sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file",
            json.dumps([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "evaluate.json")]),
            "--dataset_dir", str(slides), "--annotation_dir", str(annotations), "--output_dir", str(output),
            "--ckpt_path", str(tiny_checkpoint), "--channels", json.dumps(TINY_NET["channels"]),
            "--latent_channels", str(TINY_NET["latent_channels"]), "--num_workers", "0", "--wsi_reader", "tifffile",
            "--score", "l1", "--device", "cpu", *extra,  # l1: the tiny network's reconstruction error sees the texture
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        assert (result.returncode == 0) == succeeds, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    # a false-region rate cannot be chosen without a tumour-free slide: refused before any slide is scored
    refusal = run("calibrate", tmp_path / "no_normal", succeeds=False)
    assert f"the calibration slides (annotations in {annotations}) include no tumour-free slide" in refusal
    assert "Traceback" not in refusal and not (tmp_path / "no_normal" / "planted").exists()
    for bad in ("0", "-1", "nan"):
        refusal = run("calibrate", tmp_path / "bad_target", "--target_false_regions", bad, succeeds=False)
        assert "--target_false_regions must be a number > 0" in refusal and "Traceback" not in refusal
    write_pyramid(slides / "plain.tif", tissue_like(np.random.default_rng(4), (960, 1152)), 0.972, levels=2)
    (annotations / "plain.xml").write_text(to_asap_xml([]))  # an empty annotation: declared tumour-free

    # the same slides stand in for the calibration and the test set: this checks the plumbing, not generalisation
    log = run("calibrate", tmp_path / "calibration")
    assert "include 1 tumour-free slide(s); showing a rate within 0.25 false regions per slide needs 12" in log
    calibration = json.loads((tmp_path / "calibration" / "calibration.json").read_text())
    assert calibration["calibration_slides"] == ["plain", "planted"] and calibration["tumour_free_slides"] == ["plain"]
    point = calibration["operating_point"]
    assert point["target_false_regions"] == 0.25 and point["false_regions_per_tumour_free_slide"]["value"] == 0.0
    assert point["lesion_sensitivity"] == {"value": 1.0, "interval": [pytest.approx(0.025), 1.0], "found": 1,
                                           "n_lesions": 1}  # fmt: skip
    assert point["false_regions_per_tumour_free_slide"]["interval"] == [0.0, pytest.approx(3.689, abs=1e-3)]
    assert point["patch_precision"]["value"] > 0.9 and point["mean_iou"] > 0.9
    assert calibration["normal_quantile"] == 0.0  # the second scale is the latent score's
    from scripts.model_files import checkpoint_digest

    assert calibration["weights"] == checkpoint_digest(tiny_checkpoint)  # inference refuses it for other weights
    assert calibration["scoring"]["score"] == "l1" and calibration["scoring"]["z_statistics"] == "mean_std"
    # ... and for another score: its z-scores are not the ones the threshold was chosen on
    calibration_file = str(tmp_path / "calibration" / "calibration.json")
    other_score = ("--calibration_file", calibration_file, "--score", "mse")
    refusal = run("evaluate", tmp_path / "mse", *other_score, succeeds=False)
    assert f"{calibration_file} was calibrated with other score settings (score 'l1', now 'mse')" in refusal
    output = tmp_path / "out"
    run("evaluate", output, "--calibration_file", str(tmp_path / "calibration" / "calibration.json"))
    metrics = json.loads((output / "metrics.json").read_text())
    summary = pd.read_csv(output / "heatmap_summary.csv")
    assert list(summary.columns) == SLIDE_METRIC_COLUMNS
    # the planted block is 1/7.5 of the tissue; its random colours average towards grey on the thumbnail's level,
    # where tissue is found, so a few per cent of it read as glass
    summary = summary.set_index("slide")
    assert summary.loc["planted", "n_patches"] == 120
    assert summary.loc["planted", "tumour_fraction"] == pytest.approx(1 / 7.5, rel=0.05)
    assert metrics["threshold"]["calibrated"] is True
    assert metrics["threshold"]["z_threshold"] == calibration["z_threshold"]
    assert metrics["pooled"]["auc"] > 0.95  # 16 planted patches against 104 plain ones
    assert metrics["per_slide"]["planted"]["pixel_auc_tissue"] > 0.9 and metrics["pooled"]["pixel_auc_tissue"] > 0.9
    # the calibration slides evaluated: their operating point is the one calibration states
    for measure in ("lesion_sensitivity", "false_regions_per_tumour_free_slide", "patch_recall", "patch_precision"):
        assert metrics["operating_point"][measure] == point[measure]
    assert metrics["mean_iou"] == pytest.approx(point["mean_iou"])
    assert metrics["froc"]["n_lesions"] == 1 and 0.0 <= metrics["froc"]["score"] <= 1.0
    lesion = pd.read_csv(output / "lesions.csv").iloc[0]  # 384 px at 0.972 µm/px: a 0.43 mm micro-metastasis
    assert lesion["size"] == "micro" and 400 < lesion["diameter_um"] < 460
    assert metrics["lesion_detection"]["lesion_sensitivity"] == float(lesion["found"])
    area = metrics["called_area"]  # beside every lesion count, so that a found lesion does not read as covered
    assert 0 <= area["pixel_recall"] <= 1 and 0 <= area["pixel_precision"] <= 1
    for block in ("froc", "lesion_detection"):
        assert {k: metrics[block][k] for k in area} == area
    assert metrics["slide_level"]["n_tumour"] == 1 and metrics["slide_level"]["n_normal"] == 1
    for figure in ("roc.png", "pr.png", "planted/overlay.png"):
        assert (output / figure).stat().st_size > 1000

    # a slide whose inference failed: the metrics are written for the others, and the command says it and fails;
    # the annotation as a hand would write it: "tumor" in lower case, a group of other tissue, a 2-point polygon
    xml = (annotations / "planted.xml").read_text().replace('PartOfGroup="Tumor"', 'PartOfGroup="tumor"')

    def drawn(name: str, group: str, xy: list) -> str:
        points = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(xy))
        return f'<Annotation Name="{name}" PartOfGroup="{group}"><Coordinates>{points}</Coordinates></Annotation>'

    others = drawn("fat", "Stroma", [(0, 0), (90, 0), (90, 90)]) + drawn("line", "tumor", [(0, 0), (90, 90)])
    xml = xml.replace("</Annotations>", others + "</Annotations>")
    (annotations / "planted.xml").write_text(xml)
    (slides / "broken.tif").write_bytes(b"")
    # its labels are given (every slide's are checked before any is scored)
    refusal = run("evaluate", output, "--calibration_file", calibration_file, "--tumour_free_slides", "['broken']",
                  succeeds=False)  # fmt: skip
    assert "metrics.json covers only the slides scored" in refusal and "1 failed inference (broken)" in refusal
    assert "group(s) 'Stroma' (1 polygon) are neither tumour" in refusal and "fewer than 3 distinct" in refusal
    assert "Traceback" not in refusal
    hand_written = json.loads((output / "metrics.json").read_text())
    assert hand_written["slides_failed_inference"] == ["broken"]
    assert hand_written["pooled"]["auc"] == metrics["pooled"]["auc"]  # the lower-case group is the same tumour
