"""Bad slides, interrupted runs and a diverging training run lose nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from test_inference_cli import INFER_CONFIG, run_inference
from test_training_cli import run_training

from conftest import REPO, TINY_NET, tissue_like, write_slide
from scripts.pyramid import write_pyramid
from tests_helpers import write_datalist, write_flat_tiff


def test_bad_slides_are_recorded_and_the_good_one_completes(tmp_path, slide_0243, tiny_checkpoint):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(slide_0243, folder / "good.tif")
    (folder / "truncated.tif").write_bytes(slide_0243.read_bytes()[:3000])
    (folder / "notes.svs").write_text("this is not a slide\n")
    (folder / "empty.ndpi").write_bytes(b"")
    (folder / "renamed.svs").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    write_flat_tiff(folder / "flat.tif", side=8448)
    write_pyramid(folder / "glass.tif", np.full((1024, 1024, 3), 245, np.uint8), 0.25, levels=2)
    write_slide(folder / "nompp.tif", None, levels=2)
    write_pyramid(folder / "tiny.tif", tissue_like(np.random.default_rng(0), (60, 60)), 0.972, levels=1)
    output = tmp_path / "out"
    result = run_inference(tiny_checkpoint, folder, output, "--wsi_reader", "cuCIM")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False).set_index("slide")
    assert summary.loc["good", "status"] == "ok" and float(summary.loc["good", "n_patches"]) == 20
    expected = {"truncated": "truncated.tif", "notes": "is a text file", "glass": "no tissue", "nompp": "assume_mpp",
                "tiny": "smaller than one patch", "empty": "empty (0 bytes)", "renamed": "is a PNG image",
                "flat": "no pyramid level small enough"}  # fmt: skip
    for slide, words in expected.items():
        assert summary.loc[slide, "status"] == "error", slide
        error = summary.loc[slide, "error"]
        assert "\n" not in error and words in error and slide in error, error
    console = result.stdout + result.stderr
    assert "Traceback" not in console
    assert "Traceback" in (output / "inference.log").read_text()  # the full story is in the log file
    strict = run_inference(tiny_checkpoint, folder, tmp_path / "strict", "--strict", "True")
    assert strict.returncode != 0


def test_killed_run_resumes_skipping_finished_slides(tmp_path, slide_0243, tiny_checkpoint):
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(slide_0243, folder / f"{name}.tif")
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(INFER_CONFIG),
        "--dataset_dir", str(folder), "--output_dir", str(output), "--ckpt_path", str(tiny_checkpoint),
        "--channels", json.dumps(TINY_NET["channels"]), "--latent_channels", str(TINY_NET["latent_channels"]),
        "--num_workers", "0", "--wsi_reader", "tifffile",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (output / "a" / "complete.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (output / "a" / "complete.json").exists()
    assert not (output / "c" / "complete.json").exists(), "the run finished before it could be killed"
    assert not (output / "summary.csv").exists()

    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a.tif: outputs complete from an earlier run, skipped" in result.stdout + result.stderr
    summary = pd.read_csv(output / "summary.csv")
    assert list(summary["status"]) == ["ok", "ok", "ok"]
    leftovers = [p for p in output.rglob(".*") if p.name != ".skip96.lock"]
    assert leftovers == [], leftovers
    first, again = (pd.read_csv(output / s / "patches.csv") for s in ("a", "c"))
    assert np.allclose(first["score"], again["score"])  # same slide, same scores, whichever run made them


def test_nan_loss_stops_training_and_keeps_the_best_checkpoint(tiles_dir, tmp_path, tiny_checkpoint):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    shutil.copy(tiny_checkpoint, ckpt_dir / "model.pt")  # the best model of an earlier run
    before = (ckpt_dir / "model.pt").read_bytes()
    command_failed = False
    try:
        run_training(
            tiles_dir, ckpt_dir, tmp_path / "runs2", "--max_epochs", "2", "--beta", "nan", "--overwrite", "True"
        )
    except AssertionError as failure:
        command_failed = True
        assert "loss became nan" in str(failure) and "still holds the best finite model" in str(failure)
    assert command_failed, "a NaN loss must end the run with an error"
    assert (ckpt_dir / "model.pt").read_bytes() == before


def test_inference_with_a_mismatched_checkpoint_stops_before_any_slide(tmp_path, slide_0243, tiny_checkpoint):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(slide_0243, folder / "s.tif")
    result = run_inference(tiny_checkpoint, folder, tmp_path / "out", "--latent_channels", "4")
    assert result.returncode != 0
    assert "does not match network_def (it was trained with --channels [8, 8, 16, 16, 16, 16] --latent_channels 8)" in (
        result.stdout + result.stderr
    )
    assert not (tmp_path / "out" / "s").exists()


def test_configuration_errors_name_the_key_and_the_choices(tmp_path):
    import pytest

    from scripts.stain import StainNormalizer
    from scripts.training_data import normal_tissue_splits
    from scripts.wsi import find_slides, make_reader

    with pytest.raises(FileNotFoundError, match="dataset_dir"):
        find_slides(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="camelyonpatch_level_2_split_train_x.h5"):
        normal_tissue_splits("pcam", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        normal_tissue_splits("tiles", tmp_path)
    with pytest.raises(ValueError, match=r"wsi_reader must be one of \['cuCIM', 'OpenSlide', 'tifffile'\]"):
        make_reader("bioformats")
    with pytest.raises(ValueError, match="stain_mode must be one of"):
        StainNormalizer(mode="vahadane")


def test_a_new_training_run_does_not_replace_an_earlier_model(tiles_dir, tmp_path, tiny_checkpoint):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    shutil.copy(tiny_checkpoint, ckpt_dir / "model.pt")
    before = (ckpt_dir / "model.pt").read_bytes()
    result = run_training(tiles_dir, ckpt_dir, tmp_path / "runs", "--max_epochs", "1", check=False)
    assert result.returncode != 0
    assert "already holds model.pt from an earlier run; pass --resume True" in result.stderr
    assert (ckpt_dir / "model.pt").read_bytes() == before
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(REPO / "bundle" / "configs" / "train.json")
    assert "runs" in Path(parser.get_parsed_content("ckpt_dir")).parts  # never bundle/models by default


def test_cohort_problems_stop_the_run_before_any_slide(tmp_path, slide_0243, tiny_checkpoint):
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        shutil.copy(slide_0243, tmp_path / name / "S01.tif")
    datalist = write_datalist(tmp_path / "slides.json", [tmp_path / "A" / "S01.tif", tmp_path / "B" / "S01.tif"])
    for extra, words in (
        (("--datalist", str(datalist)), "share the output id 'S01'"),
        (("--bacth_size", "8"), "--bacth_size is not a setting of inference.json; did you mean --batch_size"),
        (("--stride", "0"), "--stride must be an integer >= 1"),
        (("--target_mpp", "0"), "--target_mpp must be a number >= 0.05"),
        (("--assume_mpp", "-1"), "--assume_mpp must be a number >= 0.05"),
        (("--batch_size", "0"), "--batch_size must be an integer >= 1"),
    ):
        result = run_inference(tiny_checkpoint, tmp_path / "A", tmp_path / "out", *extra)
        assert result.returncode != 0 and words in result.stderr, (extra, result.stderr[-2000:])
        assert "Traceback" not in result.stderr  # the message alone, not MONAI's wrapping tracebacks
        assert not (tmp_path / "out" / "summary.csv").exists()
