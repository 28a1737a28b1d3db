"""Faults lose nothing and pass for nothing: a run killed at any write, a full disk, hostile slide names and files."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_inference_cli import INFER_CONFIG, run_inference

import scripts.pyramid
from conftest import REPO, TINY_NET, write_slide
from scripts.atomic import recover_folder
from scripts.cohort import RunLogFile
from scripts.slide_outputs import COMPLETE_MARKER

FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
SLIDE_FILES = {
    "patches.csv", "score_map.npy", "score_map.json", "regions.geojson", "regions.xml", "thumbnail.jpg",
    "tissue_mask.png", "heatmap.png", COMPLETE_MARKER,
}  # fmt: skip


def run_faulty(
    checkpoint: Path, slides: Path, steps: list[dict], **settings: dict
) -> subprocess.CompletedProcess:  # fmt: skip
    """``fault_runner.py``'s ``steps`` with the tiny model on ``slides``, as the command line would score them;
    each step names one of ``settings`` (config overrides)."""
    common = {
        "dataset_dir": str(slides), "ckpt_path": str(checkpoint), "calibration_file": None,
        "channels": TINY_NET["channels"], "latent_channels": TINY_NET["latent_channels"], "num_workers": 0,
        "batch_size": 32, "wsi_reader": "tifffile", "device": "cpu",
    }  # fmt: skip
    task = {"config_file": str(INFER_CONFIG), "steps": steps, **{k: {**common, **v} for k, v in settings.items()}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "bundle")}
    return subprocess.run(
        [sys.executable, str(FAULT_RUNNER), json.dumps(task)], cwd=REPO, capture_output=True, text=True, env=env
    )


def without_timing(summary: Path) -> list:
    return pd.read_csv(summary, keep_default_na=False).drop(columns="seconds").to_dict("records")


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_rerun_killed_at_any_write_leaves_the_old_or_the_new_outputs(tmp_path, tiny_checkpoint):
    """A rerun with other settings, killed before each of its writes in turn: the slide's folder holds the old
    complete set or the new one (or, between the swap's two renames, none, which the next run's recovery completes),
    and a rerun of the new settings then finishes with exactly the new outputs."""
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(slides / "s1.tif", 0.972, size=(768, 1024), levels=2)
    old, new, states = tmp_path / "old", tmp_path / "new", tmp_path / "states"
    steps = [
        {"do": "run", "settings": "old", "output_dir": str(old)},
        {"do": "copy", "source": str(old), "output_dir": str(new)},
        {"do": "run", "settings": "new", "output_dir": str(new)},
        {"do": "kill", "settings": "new", "pristine": str(old), "states": str(states)},
        {"do": "copy", "source": str(states / "1"), "output_dir": str(tmp_path / "resumed")},
        {"do": "run", "settings": "new", "output_dir": str(tmp_path / "resumed")},  # a rerun after the first kill
    ]
    result = run_faulty(tiny_checkpoint, slides, steps, old={"z_threshold": 2.0, "min_region_tiles": 1},
                        new={"z_threshold": 0.0, "min_region_tiles": 1})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    points = next(json.loads(line)["points"] for line in result.stdout.splitlines() if line.startswith('{"points"'))
    old_set, new_set = contents(old / "s1"), contents(new / "s1")
    assert set(old_set) == set(new_set) == SLIDE_FILES
    assert old_set["regions.geojson"] != new_set["regions.geojson"], "the two settings must give different regions"

    assert points > len(SLIDE_FILES), f"only {points} write points: the hook does not see the outputs"
    seen = set()
    for n in range(1, points + 1):
        folder = states / str(n) / "s1"
        if folder.exists():
            assert contents(folder) in (old_set, new_set), f"killed at write {n}: a mix of old and new outputs"
        recover_folder(folder)
        now = contents(folder)
        assert now in (old_set, new_set), f"killed at write {n}: recovery leaves neither the old nor the new set"
        seen.add("old" if now == old_set else "new")
        summary = states / str(n) / "summary.csv"
        if summary.exists():  # the run's record of the folders, whole and true to them: removed before any changes
            assert without_timing(summary) in (without_timing(old / "summary.csv"), without_timing(new / "summary.csv"))
            assert (without_timing(summary) == without_timing(old / "summary.csv")) == (now == old_set)
        assert not [p.name for p in (states / str(n)).iterdir() if p.is_dir() and "skip96-" in p.name]
    assert seen == {"old", "new"}
    assert contents(tmp_path / "resumed" / "s1") == new_set


@pytest.fixture(scope="module")
def three_slides(tmp_path_factory, slide_0243) -> Path:
    slides = tmp_path_factory.mktemp("three")
    for name in ("a", "b", "c"):
        shutil.copy(slide_0243, slides / f"{name}.tif")
    return slides


def test_a_full_disk_fails_its_slide_alone_and_the_summary_is_written(tmp_path, three_slides, tiny_checkpoint):
    output = tmp_path / "out"
    steps = [{"do": "run", "settings": "default", "output_dir": str(output), "no_space_in": ".b.skip96-partial"}]
    result = run_faulty(tiny_checkpoint, three_slides, steps, default={})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False).set_index("slide")
    assert list(summary["status"]) == ["ok", "error", "ok"]
    assert "No space left on device; free space on that disk and rerun" in summary.loc["b", "error"]
    assert "\n" not in summary.loc["b", "error"]
    run_files = {"summary.csv", "report.html", "inference.log", ".skip96.lock"}
    assert {p.name for p in output.iterdir()} == {"a", "c", *run_files}
    for name in ("a", "c"):
        assert {p.name for p in (output / name).iterdir()} == SLIDE_FILES
    assert "Traceback" not in result.stdout + result.stderr


def test_a_summary_that_cannot_be_written_is_one_line_and_the_slides_are_kept(tmp_path, three_slides, tiny_checkpoint):
    output = tmp_path / "out"
    steps = [{"do": "run", "settings": "default", "output_dir": str(output), "no_space_in": "summary.csv"}]
    result = run_faulty(tiny_checkpoint, three_slides, steps, default={})
    assert result.returncode != 0
    assert f"cannot write {output / 'summary.csv'}: No space left on device; free space" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all((output / name / COMPLETE_MARKER).is_file() for name in ("a", "b", "c"))


def test_an_output_folder_taken_by_a_file_fails_that_slide_alone(tmp_path, three_slides, tiny_checkpoint):
    output = tmp_path / "out"
    output.mkdir()
    (output / "b").write_text("a user's file, not ours to move\n")
    result = run_inference(tiny_checkpoint, three_slides, output)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False).set_index("slide")
    assert list(summary["status"]) == ["ok", "error", "ok"]
    assert "is a file, not an output folder" in summary.loc["b", "error"]
    assert (output / "b").read_text() == "a user's file, not ours to move\n"
    assert (output / "c" / COMPLETE_MARKER).is_file()


def test_the_log_file_that_cannot_be_written_says_so_once(tmp_path, capsys):
    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    handler = RunLogFile(tmp_path / "inference.log")
    handler.stream = FullDisk()
    logger = logging.getLogger("scripts.test_full_disk_log")
    logger.addHandler(handler)
    try:
        for k in range(3):
            logger.warning("record %d", k)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and "No space left on device" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("marker", ['{"slide": "x", "settings"', "[1]", '"text"', "\xff\xfe", '{"summary": 5}'])
def test_an_unreadable_completion_marker_means_redo_not_crash(tmp_path, slide_0243, tiny_checkpoint, marker):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(slide_0243, slides / "s1.tif")
    output = tmp_path / "out"
    (output / "s1").mkdir(parents=True)
    (output / "s1" / COMPLETE_MARKER).write_bytes(marker.encode("latin-1"))
    result = run_inference(tiny_checkpoint, slides, output)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "cannot be read" in console and "Traceback" not in console
    done = json.loads((output / "s1" / COMPLETE_MARKER).read_text())
    assert done["summary"]["n_patches"] == 20


def test_hostile_slide_names_stay_inside_the_output_folder(tmp_path, slide_0243, tiny_checkpoint):
    slides = tmp_path / "slides"
    slides.mkdir()
    expected = {
        "...tif": "is empty or starts with a dot", "inference.log.tif": "name of a file the run writes",
        "summary.csv.tif": "name of a file the run writes", "SUMMARY.shard-0-of-2.csv.svs": "name of a file",
        "metrics.json.tif": "name of a file the run writes",
    }  # fmt: skip
    for name in [*expected, "good slide (ü).tif"]:
        shutil.copy(slide_0243, slides / name)
    output = tmp_path / "nest" / "out"
    result = run_inference(tiny_checkpoint, slides, output)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(output / "summary.csv", keep_default_na=False, dtype=str).set_index("path")
    for name, words in expected.items():
        row = summary.loc[str(slides / name)]
        assert row["status"] == "error" and words in row["error"] and "rename the file" in row["error"], row["error"]
    assert summary.loc[str(slides / "good slide (ü).tif"), "status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out"], "something was written beside out/"
    assert (output / "inference.log").is_file() and (output / "summary.csv").is_file()
    assert "Traceback" not in result.stdout + result.stderr


def write_bad_level(path: Path, broken, monkeypatch) -> Path:
    """A 0.486 µm/px slide (read at level 1) whose level 1 is ``broken(level 0 downsampled)``."""
    real = scripts.pyramid.downscale_local_mean
    monkeypatch.setattr(scripts.pyramid, "downscale_local_mean", lambda image, factors: broken(real(image, factors)))
    write_slide(path, 0.486, size=(1536, 2048), levels=2)
    monkeypatch.setattr(scripts.pyramid, "downscale_local_mean", real)
    return path


@pytest.mark.parametrize("reader", ["cuCIM", "OpenSlide", "tifffile"])
def test_a_pyramid_level_unlike_level_0_is_refused_naming_the_level(tmp_path, monkeypatch, reader):
    from scripts.tiling import slide_tiling
    from scripts.wsi import SlideUnusableError, make_reader

    good = write_slide(tmp_path / "good.tif", 0.486, size=(1536, 2048), levels=2)
    tiling = slide_tiling(good, make_reader(reader), 0.972, 96, 96, 0.5)
    patches, geometry = tiling.patches, tiling.geometry
    assert geometry.level == 1 and len(patches) > 0
    for name, broken in {"blank": lambda level: np.full_like(level, 240), "flipped": lambda level: level[::-1]}.items():
        slide = write_bad_level(tmp_path / f"{name}.tif", broken, monkeypatch)
        with pytest.raises(SlideUnusableError, match=r"pyramid level 1 does not show what level 0 shows") as refused:
            slide_tiling(slide, make_reader(reader), 0.972, 96, 96, 0.5)
        assert str(slide) in str(refused.value) and "\n" not in str(refused.value)


def test_files_that_are_no_slide_say_what_they_are(tmp_path, slide_0243):
    from scripts.wsi import check_slide_file

    (tmp_path / "folder.tif").mkdir()
    os.symlink("loop.tif", tmp_path / "loop.tif")
    os.symlink("gone.svs", tmp_path / "dangling.svs")
    data = slide_0243.read_bytes()
    (tmp_path / "half.tif").write_bytes(data[: len(data) * 3 // 5])
    (tmp_path / "header.tif").write_bytes(data[:100])
    expected = {
        "folder.tif": "a folder, not a slide file", "loop.tif": "leads to no file", "dangling.svs": "leads to no file",
        "half.tif": "truncated", "header.tif": "truncated or damaged",
    }  # fmt: skip
    for name, words in expected.items():
        with pytest.raises(OSError if "file" in words else ValueError) as refused:
            check_slide_file(tmp_path / name)
        message = str(refused.value)
        assert words in message and str(tmp_path / name) in message and "\n" not in message, message
    check_slide_file(slide_0243)


@pytest.mark.parametrize("reader", ["cuCIM", "OpenSlide", "tifffile"])
def test_an_aperio_decimal_comma_resolution_names_the_value_to_pass(tmp_path, reader):
    import tifffile

    from scripts.tiling import slide_tiling
    from scripts.wsi import SlideUnusableError, make_reader

    path = tmp_path / "comma.svs"
    description = "Aperio Image Library v12.0.15\r\n2048x1536 (256x256) JPEG Q=70|AppMag = 20|MPP = 0,4990"
    image = np.full((1536, 2048, 3), 200, np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="jpeg", description=description)
    with pytest.raises(SlideUnusableError, match=r"MPP = 0,4990 with a decimal comma.*pass --assume_mpp 0\.4990"):
        slide_tiling(path, make_reader(reader), 0.972, 96, 96, 0.5)


def test_a_datalist_path_with_stray_spaces_is_named(tmp_path, slide_0243):
    from scripts.wsi import read_datalist

    path = tmp_path / "list.csv"
    path.write_text(f"image\n {slide_0243}\n")
    with pytest.raises(ValueError, match=r"has leading or trailing spaces; remove them"):
        read_datalist(path)
    path.write_text(f"image\n{slide_0243}\n")
    assert read_datalist(path) == [str(slide_0243)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--z_threshold", "-inf"), "--z_threshold must be a number >= -20 and <= 20, got no value (write --z_thr"),
        (("--z_threshold=-inf",), "--z_threshold must be a number >= -20 and <= 20, got '-inf'."),
        (("--output_dir", "FILE"), "is a file, not a folder; pass a folder path."),
        (("--target_mpp", "0.5"), "--target_mpp 0.5 is not the 0.972 that"),  # the weights' recorded tiling
        (("--patch_size", "64"), "--patch_size 64 is not the 96 that"),
    ],
)
def test_command_line_mistakes_get_one_line(tmp_path, slide_0243, tiny_checkpoint, arguments, message):
    (tmp_path / "taken").write_text("")
    arguments = [str(tmp_path / "taken") if a == "FILE" else a for a in arguments]
    result = run_inference(tiny_checkpoint, slide_0243.parent, tmp_path / "out", "--calibration_file", "none",
                           *arguments)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_only_bugs_print_a_traceback(tmp_path, capsys, monkeypatch):
    from scripts.atomic import require_output_folder
    from scripts.errors import one_line_excepthook

    monkeypatch.delenv("SKIP96_TRACEBACK", raising=False)
    (tmp_path / "taken").write_text("")

    def raised(make) -> BaseException:
        try:
            make()
        except Exception as error:  # noqa: BLE001  (whatever it is, it is the case under test)
            return error
        raise AssertionError("nothing raised")

    def wrapped_by_monai():
        try:
            require_output_folder(tmp_path / "taken")
        except OSError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error

    def library_full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/a.csv")

    cases = {
        wrapped_by_monai: f"ERROR: NotADirectoryError: --output_dir {tmp_path / 'taken'} is a file, not a folder",
        library_full_disk: "ERROR: /data/out/a.csv: No space left on device; free space on that disk",
        lambda: json.loads("{"): "Traceback",  # a bug, not the user's: the whole story
    }
    for make, expected in cases.items():
        error = raised(make)
        one_line_excepthook(type(error), error, error.__traceback__)
        err = capsys.readouterr().err
        assert expected in err and (expected == "Traceback") == ("Traceback" in err), err


def test_importing_the_package_changes_nothing_global():
    """A program importing the bundle's code keeps its own error report; the configs' ``initialize`` sets ours."""
    modules = "scripts, scripts.cohort, scripts.evaluation, scripts.datasets, scripts.handlers"
    check = f"import sys; import {modules}; assert sys.excepthook is sys.__excepthook__"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
