"""``--patch_detections True``: every scored patch in ``patches.geojson`` as a QuPath detection with its z and score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import shapely.geometry

from conftest import BUNDLE, REPO


@pytest.fixture(scope="module")
def demo_with_detections(tmp_path_factory):
    """The demo slide with the shipped defaults, patch detections asked for, and a low threshold so that some are
    called."""
    out = tmp_path_factory.mktemp("detections")
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               str(BUNDLE / "configs" / "inference.json"), "--output_dir", str(out), "--patch_detections", "True",
               "--calibration_file", "none", "--z_threshold", "1.5", "--min_region_tiles", "1"]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "camelyon16_demo"


def test_each_patch_is_one_valid_detection_carrying_its_z_and_score(demo_with_detections):
    patches = pd.read_csv(demo_with_detections / "patches.csv")
    collection = json.loads((demo_with_detections / "patches.geojson").read_text())
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == len(patches)
    for feature, (_, patch) in zip(features, patches.iterrows(), strict=True):
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw
        assert polygon.bounds == (patch["x"], patch["y"], patch["x"] + patch["size0"], patch["y"] + patch["size0"])
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        assert np.isclose(properties["measurements"]["z"], patch["z"], rtol=0, atol=1e-12)
        assert np.isclose(properties["measurements"]["score"], patch["score"], rtol=0, atol=1e-9)
        assert ("classification" in properties) == bool(patch["tumour"])
    assert patches["tumour"].sum() > 0  # the low threshold called some: both kinds were checked
    ids = [uuid.UUID(feature["id"]) for feature in features]  # QuPath reads an id as a UUID
    assert len(set(ids)) == len(ids)


def test_patch_detections_are_off_by_default(demo_with_detections, tmp_path):
    written = json.loads((demo_with_detections / "complete.json").read_text())["files"]
    assert "patches.geojson" in written
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               str(BUNDLE / "configs" / "inference.json"), "--output_dir", str(tmp_path)]  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert not (tmp_path / "camelyon16_demo" / "patches.geojson").exists()
