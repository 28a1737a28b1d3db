"""The docs are tests: every command in README.md's and the model card's fenced blocks runs verbatim on the shipped
defaults (default reader, device and workers), with only its placeholders bound to small fixture data
(``doc_commands.COMMANDS`` is the table). Together they run each workflow end to end as a user does: training (PCam,
tiles, whole slides, resumed, DDP, the shipped recipe), write_normal_stats, inference (one process and torchrun),
calibrate, evaluate and the Model Zoo's export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLE, REPO, tissue_like, write_calibration_tissue, write_slide
from doc_commands import COMMANDS, Ran, all_documented, bind, command_key, run_documented
from scripts.regions import to_asap_xml

DEMO = BUNDLE / "sample_data" / "camelyon16_demo"


def test_every_documented_command_is_bound_and_every_bound_command_is_documented():
    documented, bound = set(all_documented()), set(COMMANDS)
    assert not documented - bound, f"documented commands with no row in doc_commands.COMMANDS: {documented - bound}"
    assert not bound - documented, f"rows of doc_commands.COMMANDS that no doc holds any more: {bound - documented}"


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory, tiles_dir) -> dict[str, Path]:
    """What the placeholders stand for: small, but enough for the shipped defaults (a training batch is 128)."""
    root = tmp_path_factory.mktemp("documented")
    slides, annotated = root / "slides", root / "annotated"
    slides.mkdir()
    annotated.mkdir()
    for name in ("demo_a", "demo_b"):  # two slides, so that torchrun's two ranks score one each
        (slides / f"{name}.tif").symlink_to(DEMO.with_suffix(".tif"))
    for suffix in (".tif", ".xml"):
        (annotated / DEMO.with_suffix(suffix).name).symlink_to(DEMO.with_suffix(suffix))
    write_slide(annotated / "normal.tif", 0.972, size=(1024, 1536), levels=2)  # calibrate needs a tumour-free slide
    (annotated / "normal.xml").write_text(to_asap_xml([]))
    pcam = root / "pcam"
    pcam.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("valid", 60)):  # 2 batches of 128 normals; one a rank under torchrun
        with h5py.File(pcam / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=tissue_like(rng, (n * 96, 96)).reshape(n, 96, 96, 3), chunks=(1, 96, 96, 3))
        with h5py.File(pcam / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=(np.arange(n) % 10 == 9).astype(np.uint8).reshape(n, 1, 1, 1))
    normal_slides = [write_slide(root / f"normal_{k}.tif", 0.972, size=(2048, 3072), levels=2) for k in range(2)]
    datalist = root / "slides.json"
    datalist.write_text(json.dumps([str(s) for s in normal_slides]))
    calibration_tiles, normals = write_calibration_tissue(root, rng)
    outputs = {
        name: root / name
        for name in ("out", "head_out", "cal_out", "test_out", "card_cal_out", "card_test_out", "cal_slides")
    }
    return {"slides": slides, "annotated": annotated, "pcam": pcam, "tiles": tiles_dir, "normal_slides": datalist,
            "calibration_tiles": calibration_tiles, "normal_patches": normals, **outputs}  # fmt: skip


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, Ran]:
    """The commands run so far in this module, so that one a later command needs runs once."""
    return {}


@pytest.mark.parametrize("doc, command", list(COMMANDS), ids=[f"{d}: {c[:90]}" for d, c in COMMANDS])
def test_documented_command_runs_as_written(doc, command, fixture_data, ran, tmp_path_factory):
    spec = COMMANDS[(doc, command)]
    if spec.skip:
        pytest.skip(spec.skip)
    if command.startswith("make"):
        if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
            pytest.skip("make runs the checkout's .venv, and these tests run in another environment")
        if subprocess.run(["make", "-q", "venv"], cwd=REPO, capture_output=True).returncode != 0:
            pytest.skip("the checkout's .venv is older than pyproject.toml: make would rebuild it first")
    done = run_documented(doc, command, fixture_data, ran, tmp_path_factory.mktemp("checkouts"))
    result = done.result
    output = f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{command_key(doc, command)} exited {result.returncode}:\n{output}"
    assert "Traceback" not in result.stderr, output
    assert "\r" not in result.stdout + result.stderr, "a progress bar was drawn into a pipe"
    where = done.checkout / "bundle" if doc.startswith("bundle/") else done.checkout
    for expected in spec.expect:
        path = where / bind(expected, spec.bind, fixture_data)
        assert path.is_file() and path.stat().st_size > 0, f"{command} wrote no {path}:\n{output}"
    for summary in (where / bind(e, spec.bind, fixture_data) for e in spec.expect if e.endswith("summary.csv")):
        statuses = pd.read_csv(summary)["status"]
        assert len(statuses) and (statuses == "ok").all(), summary.read_text()
