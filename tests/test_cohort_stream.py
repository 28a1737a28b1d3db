"""The cohort as one stream: slides prepared ahead and written behind give what one slide at a time gives, and a
slide whose outputs cannot be written fails alone."""

from __future__ import annotations

import shutil

import pandas as pd
from test_inference_cli import run_inference


def test_a_cohort_scores_each_slide_as_a_run_of_its_own(tmp_path, slide_0243, slide_05, tiny_checkpoint):
    together, alone = tmp_path / "together", tmp_path / "alone"
    together.mkdir()
    for name, slide in (("a", slide_0243), ("b", slide_05), ("c", slide_0243)):
        shutil.copy(slide, together / f"{name}.tif")
        (alone / name).mkdir(parents=True)
        shutil.copy(slide, alone / name / f"{name}.tif")
    result = run_inference(tiny_checkpoint, together, tmp_path / "out", "--num_workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("a", "b", "c"):
        single = run_inference(tiny_checkpoint, alone / name, tmp_path / f"out_{name}")
        assert single.returncode == 0, single.stderr[-3000:]
        for output in ("patches.csv", "regions.geojson", "score_map.json"):
            streamed = (tmp_path / "out" / name / output).read_bytes()
            assert streamed == (tmp_path / f"out_{name}" / name / output).read_bytes(), (name, output)


def test_a_slide_whose_outputs_cannot_be_written_fails_alone(tmp_path, slide_0243, tiny_checkpoint):
    folder, output = tmp_path / "slides", tmp_path / "out"
    folder.mkdir()
    for name in ("first", "blocked", "last"):
        shutil.copy(slide_0243, folder / f"{name}.tif")
    output.mkdir()
    (output / "blocked").write_text("a file where the slide's output folder would go\n")
    result = run_inference(tiny_checkpoint, folder, output)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False).set_index("slide")
    assert summary.loc["first", "status"] == "ok" and summary.loc["last", "status"] == "ok"
    assert summary.loc["blocked", "status"] == "error" and "blocked.tif" in summary.loc["blocked", "error"]
    assert (output / "first" / "complete.json").is_file() and (output / "last" / "complete.json").is_file()


def test_decoding_on_the_gpu_is_refused_with_its_measurement(tmp_path, slide_05, tiny_checkpoint):
    result = run_inference(tiny_checkpoint, slide_05.parent, tmp_path / "out", "--read_device", "cuda")
    assert result.returncode != 0
    assert "read_device 'cuda' is not offered" in result.stderr and "use --read_device cpu" in result.stderr
    assert "Traceback" not in result.stderr
