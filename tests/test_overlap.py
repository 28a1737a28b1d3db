"""The overlapped cohort stream (next slide prepared and last slide written while a slide is scored: ``overlap``,
which ``auto`` turns on beside a GPU) gives, byte for byte, what the serial stream gives, here on the CPU, also when
a slide crashes its reader in the middle of the cohort."""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
from monai.bundle import ConfigParser

import scripts.prepare
from conftest import BUNDLE

DEMO = BUNDLE / "sample_data" / "camelyon16_demo.tif"
real_slide_tiling = scripts.prepare.slide_tiling


def crashing_slide_tiling(path, *args, **kwargs):
    """What a reader's C code does on a bad file, for the slide named crash: the probe child dies of SIGSEGV."""
    if Path(path).stem == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    return real_slide_tiling(path, *args, **kwargs)


def run_cohort(slides: list[Path], output_dir: Path, overlap: bool | str) -> pd.DataFrame:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser.update({"dataset": [str(s) for s in slides], "output_dir": str(output_dir), "overlap": overlap})
    parser.get_parsed_content("imports")
    runner = parser.get_parsed_content("runner")
    assert runner.overlap is (overlap is True)  # on this CPU, auto means no overlap
    return runner.run()


def test_overlapped_and_serial_streams_write_the_same_bytes(tmp_path, monkeypatch):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("first", "crash", "last"):
        shutil.copy(DEMO, slides / f"{name}.tif")
    monkeypatch.setattr(scripts.prepare, "slide_tiling", crashing_slide_tiling)
    faulthandler.disable()  # the child's crash is the point; pytest's handler would print its stack
    try:
        cohorts = [slides / f"{n}.tif" for n in ("first", "crash", "last")]
        serial = run_cohort(cohorts, tmp_path / "serial", "auto")
        overlapped = run_cohort(cohorts, tmp_path / "overlapped", True)
    finally:
        faulthandler.enable()
    for summary in (serial, overlapped):
        assert list(summary["status"]) == ["ok", "error", "ok"], summary
        assert "SIGSEGV" in summary.loc[1, "error"]
    columns = [c for c in serial.columns if c not in ("seconds", "path")]
    pd.testing.assert_frame_equal(serial[columns], overlapped[columns])
    compared = 0
    for name in ("first", "last"):
        files = sorted(p.name for p in (tmp_path / "serial" / name).iterdir())
        assert files == sorted(p.name for p in (tmp_path / "overlapped" / name).iterdir())
        for file in files:
            serial_bytes = (tmp_path / "serial" / name / file).read_bytes()
            assert serial_bytes == (tmp_path / "overlapped" / name / file).read_bytes(), (name, file)
            compared += 1
    assert compared >= 18  # the nine files of each good slide
    assert not (tmp_path / "serial" / "crash").exists() and not (tmp_path / "overlapped" / "crash").exists()


def test_overlap_takes_auto_or_a_flag_only(tmp_path):
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the component's own error
        run_cohort([DEMO], tmp_path, "yes")
    assert "--overlap must be auto, True or False, got 'yes'" in str(refused.value.__cause__)
