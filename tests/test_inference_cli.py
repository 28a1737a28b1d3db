"""`python -m monai.bundle run inference` on synthetic slides: the output contract other tools rely on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.geometry

from conftest import BUNDLE, REPO, TINY_NET, tissue_like, write_slide
from scripts.slide_outputs import PATCH_COLUMNS, SUMMARY_COLUMNS

INFER_CONFIG = BUNDLE / "configs" / "inference.json"


def run_inference(
    checkpoint, dataset_dir, output_dir, *extra: str, launcher: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, *launcher, "-m", "monai.bundle", "run", "inference", "--config_file", str(INFER_CONFIG),
        "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), "--ckpt_path", str(checkpoint),
        "--channels", json.dumps(TINY_NET["channels"]), "--latent_channels", str(TINY_NET["latent_channels"]),
        "--num_workers", "0", "--batch_size", "32", "--wsi_reader", "tifffile", "--device", "cpu", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, slide_0243, slide_05, tiny_checkpoint):
    """Two good slides and one without tissue, scored in one run."""
    folder = tmp_path_factory.mktemp("cohort")
    shutil.copy(slide_0243, folder / "cam16.tif")
    shutil.copy(slide_05, folder / "half_micron.tif")
    blank = np.full((1024, 1024, 3), 245, dtype=np.uint8)
    from scripts.pyramid import write_pyramid

    write_pyramid(folder / "glass_only.tif", blank, 0.25, levels=3)
    output = tmp_path_factory.mktemp("out")
    result = run_inference(tiny_checkpoint, folder, output)
    return folder, output, result


def test_run_succeeds_and_summarises_every_slide(cohort):
    _, output, result = cohort
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False)
    assert list(summary.columns) == SUMMARY_COLUMNS
    rows = summary.set_index("slide")
    assert rows.loc["cam16", "status"] == "ok" and rows.loc["half_micron", "status"] == "ok"
    assert rows.loc["glass_only", "status"] == "error"
    assert "no tissue" in rows.loc["glass_only", "error"] and "glass_only.tif" in rows.loc["glass_only", "error"]
    assert "no tissue" in result.stdout + result.stderr


def test_cam16_slide_is_read_at_level_2_with_384_px_patches(cohort):
    _, output, _ = cohort
    patches = pd.read_csv(output / "cam16" / "patches.csv")
    assert list(patches.columns) == PATCH_COLUMNS
    assert set(patches["level"]) == {2} and set(patches["size0"]) == {384}
    assert len(patches) == 20  # tissue block of 1536 x 2048 level-0 px: 4 x 5 whole cells
    assert np.isclose(patches["z"].mean(), 0, atol=1e-6) and np.isclose(patches["z"].std(ddof=0), 1, atol=1e-6)
    assert set(patches["tumour"]) <= {0, 1} and set(patches["stain_fallback"]) <= {0, 1}
    assert (patches["tissue_fraction"] >= 0.5).all()


def test_half_micron_slide_is_read_at_level_1(cohort):
    _, output, _ = cohort
    patches = pd.read_csv(output / "half_micron" / "patches.csv")
    assert set(patches["level"]) == {1}
    assert set(patches["size0"]) == {186}  # 93 px read at 1.0 µm/px, resized to 96


def test_score_map_matches_patches(cohort):
    _, output, _ = cohort
    z_map = np.load(output / "cam16" / "score_map.npy")
    grid = json.loads((output / "cam16" / "score_map.json").read_text())
    patches = pd.read_csv(output / "cam16" / "patches.csv")
    assert list(z_map.shape) == grid["shape"] and grid["stride"] == 384 and grid["size"] == 384
    assert np.isfinite(z_map).sum() == len(patches)
    for _, row in patches.iterrows():
        i, j = row["y"] // grid["stride"], row["x"] // grid["stride"]
        assert z_map[int(i), int(j)] == pytest.approx(row["z"], abs=1e-5)


def test_geojson_is_a_feature_collection_inside_the_slide(cohort):
    _, output, _ = cohort
    for slide, (height, width) in (("cam16", (3072, 4096)), ("half_micron", (1536, 2048))):
        content = json.loads((output / slide / "regions.geojson").read_text())
        assert content["type"] == "FeatureCollection"
        patches = pd.read_csv(output / slide / "patches.csv")
        assert (len(content["features"]) > 0) == bool(patches["tumour"].any())
        for feature in content["features"]:
            geometry = feature["geometry"]
            assert geometry["type"] in ("Polygon", "MultiPolygon")
            assert feature["properties"]["classification"]["name"] == "Tumor"
            assert feature["properties"]["area_um2"] > 0
            polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
            for ring in (ring for polygon in polygons for ring in polygon):
                xy = np.array(ring)
                assert np.array_equal(xy[0], xy[-1]), "GeoJSON rings are closed"
                assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= width).all()
                assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= height).all()
        root = ElementTree.parse(output / slide / "regions.xml").getroot()
        assert root.tag == "ASAP_Annotations"
        tumour_xml = [a for a in root.iter("Annotation") if a.get("PartOfGroup") == "Tumor"]
        n_polygons = sum(1 if f["geometry"]["type"] == "Polygon" else len(f["geometry"]["coordinates"])
                         for f in content["features"])  # fmt: skip
        assert len(tumour_xml) == n_polygons


def test_regions_cover_exactly_the_called_patches(tmp_path, slide_0243, tiny_checkpoint):
    # a low threshold calls about a third of the patches, in shapes whose parts touch at corners
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(slide_0243, data / "cam16.tif")
    output = tmp_path / "out"
    result = run_inference(tiny_checkpoint, data, output, "--z_threshold", "0.3", "--min_region_tiles", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    patches = pd.read_csv(output / "cam16" / "patches.csv")
    called_um2 = patches["tumour"].sum() * (384 * 0.243) ** 2
    assert patches["tumour"].sum() > 0
    features = json.loads((output / "cam16" / "regions.geojson").read_text())["features"]
    geometries = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert all(g.is_valid for g in geometries), [shapely.is_valid_reason(g) for g in geometries]
    assert sum(g.area for g in geometries) * 0.243**2 == pytest.approx(called_um2)
    assert sum(f["properties"]["area_um2"] for f in features) == pytest.approx(called_um2, abs=1)
    summary = pd.read_csv(output / "summary.csv")
    assert summary.loc[0, "tumour_mm2"] == pytest.approx(called_um2 / 1e6, abs=1e-4)
    from scripts.annotations import read_asap_xml

    assert read_asap_xml(output / "cam16" / "regions.xml").area_px() * 0.243**2 == pytest.approx(called_um2)


def test_heatmap_is_written(cohort):
    _, output, _ = cohort
    from skimage import io

    image = io.imread(output / "cam16" / "heatmap.png")
    assert image.ndim == 3 and image.shape[0] > 200


def test_all_slides_failing_exits_non_zero(tiny_checkpoint, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_slide(folder / "nompp.tif", None, levels=2)
    result = run_inference(tiny_checkpoint, folder, tmp_path / "out")
    assert result.returncode != 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.loc[0, "status"] == "error" and "assume_mpp" in summary.loc[0, "error"]


def test_two_torchrun_ranks_split_the_cohort_and_merge_one_summary(cohort, tiny_checkpoint, tmp_path):
    folder, single, _ = cohort
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    result = run_inference(tiny_checkpoint, folder, tmp_path, launcher=torchrun)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shards = [pd.read_csv(tmp_path / f"summary.shard-{i}-of-2.csv") for i in (0, 1)]
    assert sorted(shards[0]["slide"].tolist() + shards[1]["slide"].tolist()) == ["cam16", "glass_only", "half_micron"]
    assert not set(shards[0]["slide"]) & set(shards[1]["slide"])
    merged, alone = (pd.read_csv(d / "summary.csv").drop(columns="seconds") for d in (tmp_path, single))
    pd.testing.assert_frame_equal(merged, alone)
    for slide in ("cam16", "half_micron"):
        for name in ("patches.csv", "score_map.npy", "regions.geojson", "regions.xml"):
            assert (tmp_path / slide / name).read_bytes() == (single / slide / name).read_bytes(), (slide, name)


def test_array_job_shards_merge_when_the_last_one_ends(cohort, tiny_checkpoint, tmp_path):
    folder, single, _ = cohort
    first = run_inference(tiny_checkpoint, folder, tmp_path, "--shard_index", "1", "--num_shards", "2")
    assert first.returncode == 0, first.stderr[-3000:]  # its only slide failed, but the cohort's outcome is not known
    assert not (tmp_path / "summary.csv").exists()
    assert "waiting for summary.shard-0-of-2.csv" in first.stdout + first.stderr
    second = run_inference(tiny_checkpoint, folder, tmp_path, "--shard_index", "0", "--num_shards", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    merged, alone = (pd.read_csv(d / "summary.csv").drop(columns="seconds") for d in (tmp_path, single))
    pd.testing.assert_frame_equal(merged, alone)


def test_lower_case_false_on_the_command_line_is_refused_not_read_as_true(tmp_path, tiny_checkpoint):
    # Fire passes `false` on as a string, which would count as true; the workflow stops before reading any slide
    result = run_inference(tiny_checkpoint, tmp_path, tmp_path / "out", "--tta", "false")
    assert result.returncode != 0
    assert "--tta must be True or False" in result.stderr
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_a_rerun_redoes_slides_whose_scoring_settings_changed(tmp_path, slide_0243, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(slide_0243, data / "cam16.tif")
    output = tmp_path / "out"
    assert run_inference(tiny_checkpoint, data, output, "--tta", "True").returncode == 0
    same = run_inference(tiny_checkpoint, data, output, "--tta", "True")
    assert "outputs complete from an earlier run, skipped" in same.stdout + same.stderr
    changed = run_inference(tiny_checkpoint, data, output, "--tta", "False")
    assert changed.returncode == 0 and "skipped" not in changed.stdout + changed.stderr
    assert json.loads((output / "cam16" / "complete.json").read_text())["settings"]["tta"] is False
    components = run_inference(tiny_checkpoint, data, output, "--tta", "False", "--latent_ignored_variance", "0.5")
    assert components.returncode == 0 and "skipped" not in components.stdout + components.stderr
    assert json.loads((output / "cam16" / "complete.json").read_text())["settings"]["latent_ignored_variance"] == 0.5


def test_rarity_finds_a_planted_smooth_stretch_as_the_slide_s_most_unusual_tissue(tmp_path, tiny_checkpoint):
    from scripts.pyramid import write_pyramid

    rng = np.random.default_rng(3)
    image = tissue_like(rng, (960, 1152))
    smooth = np.array([150, 70, 170]) + rng.normal(0, 4, (384, 384, 3))  # 4 x 4 patches without the speckle
    image[288:672, 384:768] = np.clip(smooth, 0, 255).astype(np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    write_pyramid(data / "planted.tif", image, 0.972, levels=2)
    output = tmp_path / "out"
    result = run_inference(tiny_checkpoint, data, output, "--score", "rarity", "--calibration_file", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    patches = pd.read_csv(output / "planted" / "patches.csv")
    planted = patches["x"].between(384, 767) & patches["y"].between(288, 671)
    assert planted.sum() == 16 and patches.loc[planted, "z"].min() > patches.loc[~planted, "z"].max()
    assert json.loads((output / "planted" / "score_map.json").read_text())["score"] == "rarity"
    settings = json.loads((output / "planted" / "complete.json").read_text())["settings"]
    assert settings["rarity_neighbours"] == 5 and settings["rarity_exclusion"] == 4
    # an exclusion wider than the slide leaves no patch to compare with: the slide fails with the reason and the fix
    wide = run_inference(tiny_checkpoint, data, tmp_path / "wide", "--score", "rarity", "--rarity_exclusion", "12",
                         "--calibration_file", "none")  # fmt: skip
    summary = pd.read_csv(tmp_path / "wide" / "summary.csv")
    assert wide.returncode != 0 and summary.loc[0, "status"] == "error"
    assert "0 patches more than rarity_exclusion 12 cells away" in summary.loc[0, "error"]
