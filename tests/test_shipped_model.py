"""The shipped checkpoint and demo slide: they load, fit `network_def`, and the default config scores the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE, REPO

CHECKPOINT = BUNDLE / "models" / "model.pt"


def test_shipped_checkpoint_matches_the_inference_network_def():
    assert CHECKPOINT.is_file() and CHECKPOINT.stat().st_size < 25 * 2**20
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint["model"])  # strict
    assert set(checkpoint) >= {"model", "norm_stats"}


def test_default_inference_scores_the_demo_slide(tmp_path):
    config = str(BUNDLE / "configs" / "inference.json")
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", config]
    command += ["--output_dir", str(tmp_path), "--num_workers", "0"]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["status"]) == ["ok"] and summary.loc[0, "slide"] == "camelyon16_demo"
    assert summary.loc[0, "n_patches"] > 150
    out = tmp_path / "camelyon16_demo"
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert json.loads((out / "regions.geojson").read_text())["type"] == "FeatureCollection"
