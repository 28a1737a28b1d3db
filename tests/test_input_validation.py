"""Input that used to give a wrong answer without a word now gives a one-line error naming the file and the fix."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest
import tifffile

from conftest import write_slide
from scripts.annotations import find_annotation, read_annotation, read_asap_xml, read_geojson
from scripts.atomic import TEMP_TAG, atomic_path, folder_lock, remove_stale_temp_files
from scripts.calibration import calibrated, thresholds_calibrated
from scripts.cohort import unique_slide_ids
from scripts.datasets import PCamPatches, TileNormals
from scripts.isolation import ANSWER_TIMEOUT_S, IsolatedWorker, ReaderCrashError
from scripts.settings import reject_unknown_overrides, require_number
from scripts.slide_outputs import read_summary
from scripts.slide_truth import slide_annotation
from scripts.tiling import slide_tiling
from scripts.wsi import check_slide_file, make_reader, read_datalist, slide_mpp
from tests_helpers import write_flat_tiff

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]


# --- slide identity --------------------------------------------------------------------------------------------------
def test_slides_sharing_a_file_stem_are_refused_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"A/S01.tif and B/S01.tif share the output id 'S01'"):
        unique_slide_ids(["A/S01.tif", "B/S01.tif"])
    with pytest.raises(ValueError, match="share the output id"):
        unique_slide_ids(["S01.tif", "s01.tiff"])  # one folder on a case-insensitive file system
    assert unique_slide_ids(["A/S01.tif", "B/S02.tif"]) == ["S01", "S02"]


def test_numeric_and_na_slide_ids_survive_summary_csv(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("slide,path,status,error,n_patches\n001,a/001.tif,ok,,20\nNA,a/NA.tif,error,boom,\n")
    summary = read_summary(path)
    assert summary["slide"].tolist() == ["001", "NA"]
    assert summary["n_patches"].iloc[0] == 20 and np.isnan(summary["n_patches"].iloc[1])


# --- annotations ------------------------------------------------------------------------------------------------------
def test_annotation_matching_is_case_insensitive_and_never_ambiguous(tmp_path):
    (tmp_path / "Camelyon16_Demo.XML").write_text("<ASAP_Annotations/>")
    assert find_annotation(tmp_path, "camelyon16_demo").name == "Camelyon16_Demo.XML"
    (tmp_path / "camelyon16_demo.geojson").write_text("{}")
    with pytest.raises(ValueError, match="2 annotation files match"):
        find_annotation(tmp_path, "camelyon16_demo")


def test_a_slide_without_annotation_must_be_declared_tumour_free(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"slide s1: no annotation in .* s1.xml / s1.geojson"):
        slide_annotation("s1", tmp_path, tumour_free=False)
    assert slide_annotation("s1", tmp_path, tumour_free=True) is None
    (tmp_path / "s1.xml").write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    assert slide_annotation("s1", tmp_path, tumour_free=False).tumour == []  # an empty file says it explicitly
    with pytest.raises(ValueError, match="listed in tumour_free_slides but has the annotation"):
        slide_annotation("s1", tmp_path, tumour_free=True)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [SQUARE]}},
        {"type": "Polygon", "coordinates": [SQUARE]},
        {"type": "MultiPolygon", "coordinates": [[SQUARE]]},
        {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [SQUARE]}]},
        [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [SQUARE]}}],
    ],
    ids=["feature", "bare-polygon", "multipolygon", "collection", "list"],
)
def test_every_polygon_geojson_layout_is_read(tmp_path, content):
    path = tmp_path / "s.geojson"
    path.write_text(json.dumps(content))
    assert read_geojson(path).area_px() == 100 * 100


@pytest.mark.parametrize(
    ("geometry", "words"),
    [
        ({"type": "Point", "coordinates": [5, 5]}, "feature 0 is a Point"),
        ({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "feature 0 is a LineString"),
        ({"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 1]}]}, "is a Point"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1e12, 0], [0, 9], [0, 0]]]}, "vertex 1 is"),
    ],
)
def test_unsupported_or_absurd_geometry_is_an_error_naming_the_file(tmp_path, geometry, words):
    path = tmp_path / "s.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": geometry}]}))
    with pytest.raises(ValueError, match=words) as error:
        read_geojson(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_nan_coordinates_are_an_error_naming_the_vertex(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [NaN, 10], [0, 0]]]}')
    with pytest.raises(ValueError, match=r"feature 0, ring 0, vertex 2 is \(nan, 10.0\)"):
        read_annotation(path)


@pytest.mark.parametrize(
    ("coordinate", "words"),
    [('X="12,5" Y="3"', "X is '12,5', not a number"), ('Y="3"', "X is None"), ('X="inf" Y="1"', "vertex 0")],
)
def test_malformed_asap_xml_names_the_annotation_and_coordinate(tmp_path, coordinate, words):
    path = tmp_path / "s.xml"
    points = (
        f'<Coordinate Order="0" {coordinate}/><Coordinate Order="1" X="9" Y="0"/><Coordinate Order="2" X="9" Y="9"/>'
    )
    path.write_text(
        f'<ASAP_Annotations><Annotations><Annotation Name="_7" PartOfGroup="Tumor"><Coordinates>{points}'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    with pytest.raises(ValueError, match=words) as error:
        read_asap_xml(path)
    assert str(path) in str(error.value) and "Annotation '_7'" in str(error.value)


# --- resolution ---------------------------------------------------------------------------------------------------
def write_with_resolution(path, resolution) -> None:
    """A pyramidal slide whose resolution tags are overwritten with ``resolution`` (px per cm) on every level."""
    write_slide(path, 0.25, levels=3)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            for name in ("XResolution", "YResolution"):
                page.tags[name].overwrite(resolution)


@pytest.mark.parametrize("backend", ["cuCIM", "OpenSlide", "tifffile"])
@pytest.mark.parametrize(("resolution", "what"), [((0, 1), "0"), ((10, 1), "1000")], ids=["zero", "1000-um"])
def test_zero_or_absurd_resolution_is_no_usable_resolution(tmp_path, backend, resolution, what):
    path = tmp_path / "s.tif"
    write_with_resolution(path, resolution)
    reader = make_reader(backend)
    wsi = reader.read(str(path))
    with pytest.raises(ValueError, match="assume_mpp") as error:
        slide_mpp(reader, wsi, path)
    assert "no usable resolution" in str(error.value) or "no resolution" in str(error.value)
    assert slide_mpp(reader, wsi, path, assume_mpp=0.25) == 0.25


def test_a_flat_slide_too_big_for_a_thumbnail_is_refused_before_reading(tmp_path):
    path = write_flat_tiff(tmp_path / "flat.tif", side=8448)  # one level of 71 M pixels: too big for a thumbnail
    for backend in ("cuCIM", "tifffile"):
        with pytest.raises(ValueError, match=r"no pyramid level small enough .* 8448 x 8448 px"):
            slide_tiling(path, make_reader(backend), 0.972, 96, 96, 0.5)


def _segfault() -> None:
    faulthandler.disable()  # pytest's would print the child's stack; a real reader crash prints nothing of ours
    os.kill(os.getpid(), signal.SIGSEGV)  # what a reader's C code does on a bad file


def run_isolated(function, *args, timeout: float = ANSWER_TIMEOUT_S):
    """``function(*args)`` once in a forked child, as the slide preparer runs its reading."""
    with IsolatedWorker(function, timeout) as worker:
        return worker(*args)


def test_a_native_crash_in_the_reader_is_an_exception_not_the_end_of_the_run():
    with pytest.raises(ReaderCrashError, match="signal SIGSEGV"):
        run_isolated(_segfault)
    with pytest.raises(ValueError, match="boom"):
        run_isolated(int, "boom")
    assert run_isolated(sum, [1, 2]) == 3
    with pytest.raises(ReaderCrashError, match="did not answer within 0.5 s"):
        run_isolated(time.sleep, 30, timeout=0.5)


def _pid_or_crash(crash: bool) -> int:
    if crash:
        _segfault()
    return os.getpid()


def test_the_kept_reader_child_serves_a_cohort_and_is_replaced_after_a_crash():
    with IsolatedWorker(_pid_or_crash) as worker:
        first = worker(False)
        assert first != os.getpid() and worker(False) == first  # one child for many slides, not one each
        with pytest.raises(ReaderCrashError, match="signal SIGSEGV"):
            worker(True)
        assert worker(False) not in (first, os.getpid())  # the next slide gets a new child
    assert worker.close() is None  # closed on leaving the block


def test_closing_the_kept_child_does_not_wait_on_a_pipe_a_later_fork_holds_open():
    worker = IsolatedWorker(os.getpid)
    worker()
    holder = os.fork()  # e.g. a DataLoader worker: it inherits the write end, so the child never reads EOF
    if holder == 0:
        time.sleep(30)
        os._exit(0)
    try:
        closing = threading.Thread(target=worker.close, daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() waits for an EOF that never comes"
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)


# --- slide files and datalists ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.svs", b"", r"empty \(0 bytes\)"),
        ("renamed.svs", b"\x89PNG\r\n\x1a\n" + bytes(100), "is a PNG image"),
        ("notes.ndpi", b"scanner export log\n" * 10, "is a text file"),
        ("missing.tif", None, "no such file"),
    ],
)
def test_slide_file_errors_say_the_real_cause(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=words) as error:
        check_slide_file(path)
    assert str(path) in str(error.value)


def test_headerless_csv_datalist_keeps_its_first_slide(tmp_path):
    (tmp_path / "list.csv").write_text("a.tif\nb.svs\n")
    assert [p.rsplit("/", 1)[1] for p in read_datalist(tmp_path / "list.csv")] == ["a.tif", "b.svs"]
    (tmp_path / "with_header.csv").write_text("image,label\na.tif,1\n")
    assert len(read_datalist(tmp_path / "with_header.csv")) == 1


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("bad.json", '{"testing": [{"image": "a.tif"},]}', "not valid JSON"),
        ("nokey.json", '{"testing": [{"image": "a.tif"}, {"label": 1}]}', "entry 1"),
        ("blank.csv", 'image\na.tif\n""\n', "line 3 has an empty image cell"),
        ("columns.csv", "slide,label\na.tif,1\n", "no 'image' column"),
    ],
)
def test_malformed_datalists_name_the_file_and_entry(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=words) as error:
        read_datalist(tmp_path / name)
    assert name in str(error.value)


# --- settings -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "kwargs"),
    [
        (0, {"minimum": 1}),
        (float("nan"), {}),
        ("8", {}),
        (2.5, {"integer": True}),
        (True, {}),
        (0.0, {"minimum": 0, "exclusive_minimum": True}),
    ],  # fmt: skip
)
def test_numbers_out_of_range_are_refused_naming_the_key(value, kwargs):
    with pytest.raises(ValueError, match="--stride must be"):
        require_number("stride", value, **kwargs)


def test_unknown_command_line_keys_are_refused_with_close_matches(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"batch_size": 64, "train": {"dataloader": {"num_workers": 2}}}))
    with pytest.raises(ValueError, match="--bacth_size is not a setting of c.json; did you mean --batch_size"):
        reject_unknown_overrides(["run", "training", "--config_file", str(config), "--bacth_size", "8"])
    reject_unknown_overrides(
        ["run", "--config_file", str(config), "--batch_size", "8", "--train#dataloader#num_workers=0"]
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [('{"z_threshold": NaN}', "must be a number"), ('{"z_threshold": "high"}', "must be a number"),
     ('{"z_threshold": 1e9}', "<= 20"), ('{"min_region_tiles": 2}', "has no 'z_threshold'"), ("{", "not valid JSON")],
)  # fmt: skip
def test_calibration_files_with_bad_values_are_refused(tmp_path, content, words):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises((ValueError, KeyError), match=words) as error:
        calibrated("z_threshold", 2.0, path)
    assert str(path) in str(error.value)
    assert calibrated("min_region_tiles", 5, None) == 5


# --- training data ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("patches", "words"),
    [
        (np.full((4, 96, 96, 3), 30000, np.uint16), "pixels are uint16"),
        (np.full((4, 96, 96, 3), 0.5, np.float32), "pixels are float32"),
        (np.full((4, 64, 64, 3), 200, np.uint8), "patches are 64 x 64 x 3"),
        (np.ones((4, 96, 96, 3), np.uint8), "brightest pixel is 1"),
    ],
    ids=["uint16", "float", "64px", "zero-one"],
)
def test_training_patches_of_the_wrong_kind_are_refused(tmp_path, patches, words):
    for split in ("train", "valid"):
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=patches)
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=np.zeros((len(patches), 1, 1, 1), np.uint8))
    with pytest.raises(ValueError, match=words) as error:
        PCamPatches(tmp_path)
    assert "camelyonpatch_level_2_split_train_x.h5" in str(error.value)


def test_sixteen_bit_tiles_are_refused(tmp_path):
    from skimage import io

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "t.tif", np.full((128, 128, 3), 40000, np.uint16), photometric="rgb")
    io.imsave(tmp_path / "masks" / "t.tif", np.zeros((128, 128), np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match="t.tif: pixels are uint16"):
        TileNormals(tmp_path, ["t.tif"])


# --- output folders -----------------------------------------------------------------------------------------------
def test_rerun_cleanup_removes_only_this_bundles_temp_files(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".notes").write_text("mine")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.csv") as tmp:
        tmp.write_text("half")
        (tmp_path / f".y.csv.abc{TEMP_TAG}.csv").write_text("left by a killed run")
        raise RuntimeError
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ipynb_checkpoints", ".notes"]


def test_a_second_writer_of_an_output_folder_is_refused_naming_the_first(tmp_path):
    with folder_lock(tmp_path), pytest.raises(RuntimeError, match=r"being written by another run \(pid \d+"):
        run_isolated(_take_lock, tmp_path)  # another process
    run_isolated(_take_lock, tmp_path)  # free again once the first is done


def _take_lock(folder) -> None:
    with folder_lock(folder):
        pass


def test_a_calibration_file_made_for_other_weights_is_refused(tmp_path, tiny_checkpoint):
    from scripts.model_files import checkpoint_digest

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"z_threshold": 1.5, "min_region_tiles": 3, "weights": "0" * 40}))
    with pytest.raises(ValueError, match="calibrated for other weights than ckpt_path") as error:
        calibrated("z_threshold", 2.0, path, tiny_checkpoint)
    assert str(path) in str(error.value)
    path.write_text(
        json.dumps({"z_threshold": 1.5, "min_region_tiles": 3, "weights": checkpoint_digest(tiny_checkpoint)})
    )
    assert calibrated("z_threshold", 2.0, path, tiny_checkpoint) == 1.5


SCORING = {"score": "latent", "tta": False, "z_statistics": "mean_std", "target_mpp": 0.972, "stride": 96}


def test_a_calibration_file_made_with_other_score_settings_is_refused(tmp_path, tiny_checkpoint):
    from scripts.model_files import checkpoint_digest

    path = tmp_path / "calibration.json"
    content = {"z_threshold": 1.5, "min_region_tiles": 3, "weights": checkpoint_digest(tiny_checkpoint)}
    path.write_text(json.dumps(content | {"scoring": SCORING}))
    now = SCORING | {"z_statistics": "median_mad", "tta": True}
    with pytest.raises(ValueError, match="other score settings") as error:
        calibrated("z_threshold", 2.0, path, tiny_checkpoint, now)
    assert str(path) in str(error.value) and "tta False, now True; z_statistics 'mean_std', now 'median_mad'" in str(
        error.value
    )
    assert not thresholds_calibrated(path, tiny_checkpoint, now, z_threshold=1.5, min_region_tiles=3)
    # the same settings, numbers written another way, and settings the file does not record: applied
    same = SCORING | {"target_mpp": 0.9720000001, "stride": 96.0, "stain_mode": "slide"}
    assert calibrated("z_threshold", 2.0, path, tiny_checkpoint, same) == 1.5
    assert thresholds_calibrated(path, tiny_checkpoint, same, z_threshold=1.5, min_region_tiles=3)
    # a threshold set by hand over the file's is not calibrated (metrics.json's record)
    assert not thresholds_calibrated(path, tiny_checkpoint, same, z_threshold=0.5, min_region_tiles=3)


def test_the_rarity_knobs_are_part_of_the_score_settings_only_for_rarity():
    from scripts.calibration import scoring_settings
    from scripts.scores import AnomalyScore, SlideRarity

    score_settings = {"tta": False, "latent_ignored_variance": 0.0}
    latent = AnomalyScore("latent", False, 0.0, SlideRarity(5, 4))
    assert scoring_settings(latent, stride=96) == {"score": "latent", **score_settings, "stride": 96}
    assert scoring_settings(AnomalyScore("rarity", False, 0.0, SlideRarity(5, 4)), stride=96) == {
        "score": "rarity", **score_settings, "rarity_neighbours": 5, "rarity_exclusion": 4, "stride": 96
    }  # fmt: skip
    assert latent.slide_scores is None


def test_a_score_is_checked_once_where_the_config_chooses_it():
    from scripts.scores import AnomalyScore, SlideRarity

    with pytest.raises(ValueError, match="score must be one of"):
        AnomalyScore("psnr", False, 0.0, SlideRarity(5, 4))
    with pytest.raises(ValueError, match="tta applies to the label-free per-patch scores, not 'rarity'"):
        AnomalyScore("rarity", True, 0.0, SlideRarity(5, 4))


def test_a_calibration_file_that_records_no_score_settings_is_applied_with_one_warning(
    tmp_path, tiny_checkpoint, caplog
):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"z_threshold": 1.5, "min_region_tiles": 3}))
    assert calibrated("z_threshold", 2.0, path, tiny_checkpoint, SCORING) == 1.5
    assert calibrated("min_region_tiles", 5, path, tiny_checkpoint, SCORING) == 3
    warnings = [r.getMessage() for r in caplog.records if "records no score settings" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_an_orphaned_probe_exits_instead_of_blocking_on_its_pipe(tmp_path):
    # the killed-run case: the parent dies while the child is sending a result larger than the pipe's buffer
    script = tmp_path / "orphan.py"
    script.write_text(
        "import os, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from scripts.isolation import IsolatedWorker\n"
        "def big():\n"
        "    open(sys.argv[2], 'w').write(str(os.getpid()))\n"
        "    time.sleep(1)\n"
        "    return b'x' * 10_000_000\n"
        "IsolatedWorker(big)()\n"
    )
    import subprocess
    import sys

    from conftest import BUNDLE

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, str(script), str(BUNDLE), str(pid_file)])
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    child = int(pid_file.read_text())
    while time.time() < deadline and os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or "Z" in _state(child), "the orphaned child is still alive"


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0]
    except FileNotFoundError:
        return "Z"


def test_the_shipped_calibration_gives_way_to_the_defaults_for_another_model(tiny_checkpoint, caplog):
    from scripts.calibration import SHIPPED_CALIBRATION

    if not SHIPPED_CALIBRATION.is_file():
        pytest.skip("no shipped calibration in bundle/models")
    assert calibrated("z_threshold", 2.0, SHIPPED_CALIBRATION, tiny_checkpoint) == 2.0
    assert "shipped model's calibration" in caplog.text and "uncalibrated" in caplog.text


def test_the_shipped_calibration_gives_way_to_the_defaults_for_another_score(caplog):
    from scripts.calibration import SHIPPED_CALIBRATION

    if not SHIPPED_CALIBRATION.is_file():
        pytest.skip("no shipped calibration in bundle/models")
    shipped = SHIPPED_CALIBRATION.parent / "model.pt"
    content = json.loads(SHIPPED_CALIBRATION.read_text())
    recorded = content["scoring"]
    assert calibrated("z_threshold", 2.0, SHIPPED_CALIBRATION, shipped, recorded) == content["z_threshold"]
    assert calibrated("z_threshold", 2.0, SHIPPED_CALIBRATION, shipped, recorded | {"score": "l1"}) == 2.0
    assert "other score settings (score 'latent', now 'l1')" in caplog.text and "uncalibrated" in caplog.text


def test_an_empty_slide_folder_is_named(tmp_path):
    from scripts.wsi import find_slides

    (tmp_path / "notes.txt").write_text("no slides here")
    with pytest.raises(FileNotFoundError, match=f"dataset_dir {tmp_path} holds no slide file"):
        find_slides(tmp_path)


@pytest.mark.parametrize(
    ("configs", "listed"),
    [
        (["inference.json"], ("--ckpt_path", "--calibration_file", "--z_threshold", "--datalist", "--wsi_reader")),
        (["inference.json", "evaluate.json"], ("--annotation_dir", "--tumour_free_slides", "--ckpt_path")),
        (["train.json"], ("--max_epochs", "--data_source", "--exclude", "--learning_rate")),
        (["train.json", "multi_gpu_train.json"], ("--max_epochs", "--seed")),
        (["train.json", "train_head.json"], ("--head_hidden", "--class_balance", "--label_rule", "--ckpt_path")),
    ],
)
def test_help_describes_every_setting_by_stage_with_its_default(configs, listed, capsys):
    from conftest import BUNDLE

    files = str([str(BUNDLE / "configs" / c) for c in configs])
    with pytest.raises(SystemExit) as stop:
        reject_unknown_overrides(["--config_file", files, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  --")}
    assert set(listed) <= set(lines) and "--imports" not in lines and "--run" not in lines
    assert "--inferer" not in lines  # a component, not a setting
    assert "Other:" not in out and "(undescribed)" not in out  # every setting has its line (setting_help.STAGES)
    assert not [line for line in lines.values() if "$" in line or "@" in line], "an expression was left unresolved"
    assert "Compute:" in out and out.index("Data:") < out.index("Compute:")
    assert all(len(line) <= 200 for line in lines.values()), "a long default was not elided"


def test_help_shows_what_an_expression_default_comes_to(capsys):
    """``--target_mpp`` is read from the model's statistics, ``--domain_limit`` from a module that only the layered
    evaluate config's base imports: --help shows the numbers."""
    from conftest import BUNDLE

    files = str([str(BUNDLE / "configs" / c) for c in ("inference.json", "evaluate.json")])
    with pytest.raises(SystemExit):
        reject_unknown_overrides(["--config_file", files, "--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert lines["--target_mpp"].endswith("[0.972]")
    assert lines["--stride"].endswith("[96]")
    assert lines["--domain_limit"].endswith("[5.3]")
    assert lines["--sweep_thresholds"].endswith("... 100 values]]")
