"""The per-slide pipeline is declared in inference.json: a user replaces a post-processing step, or adds a writer, with
one config override on the shipped defaults, and the rest of the pipeline takes the result as its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import BUNDLE, REPO

USER_STEPS = '''
import dataclasses

import numpy as np

from scripts.slide_scorer import Decision


class CallHighest:
    """A user's own decision: call the ``count`` patches of highest z, however low."""

    def __init__(self, count):
        self.count = count

    def __call__(self, scored):
        threshold = float(np.sort(scored.z.values)[-self.count])
        tumour = np.nan_to_num(scored.z.map, nan=-np.inf) >= threshold
        return dataclasses.replace(scored, tumour=tumour, decision=Decision(threshold, 1, None))


class Broken:
    """A user's step with a bug."""

    def __call__(self, scored):
        raise ValueError("my step cannot trace this slide")


class PatchCount:
    """A user's own output file."""

    def __call__(self, result, folder):
        (folder / "patch_count.txt").write_text(str(len(result.scores)))
'''


@pytest.fixture(scope="module")
def user_steps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_steps")
    (folder / "my_steps.py").write_text(USER_STEPS)
    return folder


def run_demo(user_steps, output_dir, config_file, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``run inference`` on the bundled demo slide with the shipped defaults, ``my_steps`` importable."""
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", config_file,
               "--output_dir", str(output_dir), *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(user_steps)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    assert (result.returncode == 0) is ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_one_override_replaces_a_post_processing_step(user_steps, tmp_path):
    """The override also makes the finished default outputs stale: the slide is scored again, not skipped."""
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    steps = [step["_target_"].rsplit(".", 1)[-1] for step in config["postprocessing"]["transforms"]]
    assert steps == ["PatchScores", "ZScore", "ScoreFloor", "CleanUp", "TraceRegions"]
    run_demo(user_steps, tmp_path, str(BUNDLE / "configs" / "inference.json"))
    step = "{'_target_': 'my_steps.CallHighest', 'count': 3}"
    result = run_demo(user_steps, tmp_path, str(BUNDLE / "configs" / "inference.json"), "--postprocessing#transforms#3",
                      step)  # fmt: skip
    assert "outputs complete from an earlier run" not in result.stdout + result.stderr
    slide = tmp_path / "camelyon16_demo"
    patches = pd.read_csv(slide / "patches.csv")
    highest = patches["z"].nlargest(3)
    assert patches["tumour"].sum() == 3 and patches.loc[highest.index, "tumour"].all()
    score_map = json.loads((slide / "score_map.json").read_text())
    assert score_map["z_threshold"] == pytest.approx(highest.min(), abs=1e-6) and score_map["min_region_tiles"] == 1
    regions = json.loads((slide / "regions.geojson").read_text())["features"]
    assert 1 <= len(regions) <= 3 and sum(r["properties"]["n_patches"] for r in regions) == 3
    assert f"camelyon16_demo: {len(regions)} region(s)" in result.stdout + result.stderr


def test_a_failing_step_fails_its_slide_with_its_own_message(user_steps, tmp_path):
    result = run_demo(user_steps, tmp_path, str(BUNDLE / "configs" / "inference.json"), "--postprocessing#transforms#4",
                      "{'_target_': 'my_steps.Broken'}", ok=False)  # fmt: skip
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["status"]) == ["error"]
    assert summary.loc[0, "error"].endswith("camelyon16_demo.tif: my step cannot trace this slide")
    assert "all 1 slides failed" in result.stderr and not (tmp_path / "camelyon16_demo").exists()


def test_one_layered_config_adds_a_writer(user_steps, tmp_path):
    extra = tmp_path / "count_writer.json"
    extra.write_text(json.dumps({"+writers": [{"_target_": "my_steps.PatchCount"}]}))
    files = str([str(BUNDLE / "configs" / "inference.json"), str(extra)])
    run_demo(user_steps, tmp_path / "out", files)
    slide = tmp_path / "out" / "camelyon16_demo"
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert (slide / "patch_count.txt").read_text() == str(summary.loc[0, "n_patches"])
    written = json.loads((slide / "complete.json").read_text())["files"]
    assert {"patch_count.txt", "regions.geojson", "heatmap.png", "patches.csv"} <= set(written)
