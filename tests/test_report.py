"""report.html: the cohort's page, written by inference as slides complete and by evaluate with its figures, tested as
a user opens it: in a real (headless) browser, from the file."""

from __future__ import annotations

import html
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from browser import CHROMIUM, NO_CHROMIUM, open_page, screenshot
from conftest import BUNDLE, REPO, write_calibration_tissue
from scripts import report as report_module
from scripts.report import SLIDE_COLUMNS, CohortReport
from scripts.slide_outputs import SUMMARY_COLUMNS

EVALUATE_CONFIGS = str([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "evaluate.json")])
README_SCREENSHOT = REPO / "bundle" / "docs" / "report.png"
SLIDE_ROW = re.compile(r'<tr class="(ok|error|pending)[^"]*">.*?<td[^>]*class="text slide"[^>]*>([^<]*)', re.DOTALL)


def summary(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame([{"status": "ok", "error": "", **row} for row in rows]).reindex(columns=SUMMARY_COLUMNS)


def listed(page: str) -> dict[str, str]:
    """Each slide row of a page (as written, or as a browser's DOM holds it): slide id -> status."""
    return {html.unescape(name).strip(): status for status, name in SLIDE_ROW.findall(page)}


def test_the_page_lists_every_slide_escaped_with_its_status_and_thumbnail(tmp_path):
    odd = 'a<b>&"c'  # a legal file name that HTML must escape
    for slide in ("s1", odd, "s3"):  # the failed and pending slides' folders hold an earlier run's images
        (tmp_path / slide).mkdir()
        Image.fromarray(np.full((58, 100, 3), 200, np.uint8)).save(tmp_path / slide / "heatmap.png")
    table = summary(
        {"slide": "s1", "n_patches": 210, "tumour_mm2": 0.25, "n_regions": 1, "slide_score": 2.5},
        {"slide": odd, "status": "error", "error": "x.tif: not a slide <script>alert(1)</script>"},
        {"slide": "s3", "status": "pending"},
    )
    CohortReport(tmp_path).write(table, {"score": "latent", "z_threshold": 2.0, "min_slide_score": None})
    page = (tmp_path / "report.html").read_text()
    assert listed(page) == {"s1": "ok", odd: "error", "s3": "pending"}
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('src="data:image/jpeg;base64,') == 1  # s1's overlay: not the failed or the pending slide's
    assert 'href="s1/heatmap.png"' in page and 'data-sort="2.5"' in page
    assert re.search(r"<b>1</b> called.*<b>1</b> failed|<b>1</b> failed.*<b>1</b> called", page, re.DOTALL)
    assert "<td>min_slide_score</td><td>off</td>" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched: it opens offline


def test_thumbnails_are_made_once_per_overlay_file(tmp_path, monkeypatch):
    """The page is rewritten after every slide; the slides already done must not cost their images again."""
    made = []
    real = report_module.thumbnail_uri
    monkeypatch.setattr(report_module, "thumbnail_uri", lambda path: made.append(path) or real(path))
    (tmp_path / "s1").mkdir()
    image = tmp_path / "s1" / "heatmap.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    report = CohortReport(tmp_path)
    for _ in range(3):
        report.write(summary({"slide": "s1"}), {})
    assert made == [image]
    Image.fromarray(np.ones((20, 30, 3), np.uint8)).save(tmp_path / "s1" / "overlay.png")  # evaluate's overlay
    report.write(summary({"slide": "s1"}), {})
    assert made == [image, tmp_path / "s1" / "overlay.png"]
    assert 'href="s1/overlay.png"' in (tmp_path / "report.html").read_text()


RECORDING_REPORT = '''
import json
import logging
from pathlib import Path

from scripts.report import SLIDE_COLUMNS, CohortReport


class RecordingReport(CohortReport):
    """The shipped report, recording the slides' statuses each time it writes the page."""

    def write(self, summary, settings, name="report.html"):
        super().write(summary, settings, name)
        log = Path(self.output_dir) / "writes.jsonl"
        with log.open("a") as f:
            f.write(json.dumps(dict(zip(summary["slide"], summary["status"]))) + "\\n")
'''


def test_inference_rewrites_the_report_as_each_slide_completes(tmp_path):
    slides, user = tmp_path / "slides", tmp_path / "user"
    slides.mkdir()
    user.mkdir()
    for name in ("a", "b"):
        (slides / f"{name}.tif").symlink_to(BUNDLE / "sample_data" / "camelyon16_demo.tif")
    (user / "recording.py").write_text(RECORDING_REPORT)
    layer = tmp_path / "recording.json"
    layer.write_text(json.dumps({"report": {"_target_": "recording.RecordingReport", "output_dir": "@output_dir"}}))
    configs = str([str(BUNDLE / "configs" / "inference.json"), str(layer)])
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", configs, "--dataset_dir",
               str(slides), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(user)}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    writes = [json.loads(line) for line in (tmp_path / "out" / "writes.jsonl").read_text().splitlines()]
    assert writes[0] == {"a": "pending", "b": "pending"}
    assert {"a": "ok", "b": "pending"} in writes
    assert writes[-1] == {"a": "ok", "b": "ok"}
    assert listed((tmp_path / "out" / "report.html").read_text()) == {"a": "ok", "b": "ok"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """``run evaluate``, as documented and on the shipped defaults, over sparse calibration slides
    (``tools/sparse_slides.py``: three with tumour, two without) and one file that is not a slide."""
    root = tmp_path_factory.mktemp("evaluated")
    tiles, normals = write_calibration_tissue(root, np.random.default_rng(0))
    cohort = root / "cohort"
    subprocess.run(
        [sys.executable, "-m", "tools.sparse_slides", str(cohort), "--tiles_dir", str(tiles), "--normals_dir",
         str(normals), "--slides", "3", "--normal_slides", "2", "--normals_part", "rest"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    (cohort / "broken.tif").write_text("not a slide")
    (cohort / "broken.xml").write_text((cohort / "normal_00.xml").read_text())
    output = root / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "evaluate", "--config_file", EVALUATE_CONFIGS,
               "--dataset_dir", str(cohort), "--annotation_dir", str(cohort), "--output_dir", str(output)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    # the metrics and the report are written, and then the command fails: they cover 5 of the cohort's 6 slides
    assert result.returncode != 0 and "1 failed inference (broken)" in result.stderr, result.stderr[-3000:]
    return output


def test_evaluate_on_sparse_slides_writes_a_report_with_its_curves(evaluated):
    page = (evaluated / "report.html").read_text()
    metrics = json.loads((evaluated / "metrics.json").read_text())
    for figure in ("slide-level ROC", "lesion FROC", "lesions found, by size", "per-slide IoU"):
        assert re.search(rf'<img src="data:image/png;base64,[^"]+" alt="{figure}">', page), figure
    froc = metrics["froc"]
    assert f'<td>FROC score (mean of the points below)</td><td class="text">{froc["score"]:.3f}</td>' in page
    recall = metrics["called_area"]["pixel_recall"]
    assert f'<td>called area: pixel recall</td><td class="text">{recall:.3f}</td>' in page
    assert listed(page) == {"broken": "error", **{s: "ok" for s in ("normal_00", "normal_01", "sparse_00",
                                                                         "sparse_01", "sparse_02")}}  # fmt: skip
    assert "not evaluated (inference failed): broken" in page
    for slide in ("normal_00", "sparse_00"):  # each thumbnail opens the slide's overlay, which evaluate drew
        assert f'href="{slide}/overlay.png"' in page and (evaluated / slide / "overlay.png").is_file()


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_browser_reports_what_a_broken_page_prints(tmp_path):
    """The control for the report's check: a console error and an uncaught exception are both read back."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('boom'); missingFunction();</script></body></html>")
    console = open_page(page).console
    assert len(console) == 2 and "boom" in console[0] and "missingFunction is not defined" in console[1]


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_report_opens_in_a_real_browser(evaluated, tmp_path):
    """No console message (an error, an exception, a resource that failed), a page that is not blank, every slide
    listed, the failed one too; a click on a heading sorts the table. ``SKIP96_RECORD_SCREENSHOT=1`` writes the
    README's screenshot from this page."""
    opened = open_page(evaluated / "report.html")
    assert opened.console == []
    assert set(listed(opened.dom)) == {"broken", "normal_00", "normal_01", "sparse_00", "sparse_01", "sparse_02"}
    shot = np.asarray(Image.open(screenshot(evaluated / "report.html", tmp_path / "report.png")).convert("L"))
    assert shot.std() > 10 and (shot < 128).mean() > 0.01  # text and figures, not a white (or black) page
    if os.environ.get("SKIP96_RECORD_SCREENSHOT"):
        image = Image.open(tmp_path / "report.png").convert("RGB")
        image.resize((960, image.height * 960 // image.width), Image.LANCZOS).quantize(256).save(
            README_SCREENSHOT, optimize=True
        )

    # sorting: the page with a click on the slide-score heading, then a second click, as the browser runs it
    page = (evaluated / "report.html").read_text()
    table = pd.read_csv(evaluated / "summary.csv", dtype={"slide": str})
    scores = dict(zip(table["slide"], table["slide_score"], strict=True))
    column = list(SLIDE_COLUMNS).index("slide_score") + 1
    for clicks, descending in ((1, False), (2, True)):
        clicked = tmp_path / f"clicked{clicks}.html"
        click = f"document.querySelector('th[data-column=\"{column}\"]').click();" * clicks
        clicked.write_text(page.replace("</body>", f"<script>{click}</script></body>"))
        opened = open_page(clicked)
        assert opened.console == []
        order = list(listed(opened.dom))
        ranked = sorted((s for s in scores if not pd.isna(scores[s])), key=scores.get, reverse=descending)
        assert order == [*ranked, "broken"]  # the failed slide, with no score, last either way


def test_a_page_that_cannot_be_written_is_logged_once_and_fails_nothing(tmp_path, monkeypatch, caplog):
    def full_disk(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "atomic_path", full_disk)
    report = CohortReport(tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            report.write(summary({"slide": "s1"}), {})
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write" in warnings[0] and "report.html" in warnings[0]
    assert not (tmp_path / "report.html").exists()
