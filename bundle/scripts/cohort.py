"""The cohort runner: each slide through the stages ``inference.json`` declares, and what only a runner does:
resuming finished slides, the output folder's lock, shards, a failed slide recorded without costing the others, and
the overlap of one slide's preparation and writing with the next one's scoring.

Slides are scored one at a time, so memory is bounded by a slide or two.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from .atomic import (
    OutputWriteError,
    atomic_path,
    folder_lock,
    require_output_folder,
    write_failure,
)
from .errors import reported
from .prepare import SlidePreparer
from .report import REPORT_FILE, CohortReport
from .settings import require_number
from .slide_outputs import (
    SUMMARY_COLUMNS,
    SlideWriter,
    completed_summary,
    component_record,
    read_summary,
    summary_row,
    write_slide,
)
from .slide_scorer import ScoredSlide, SlideScorer
from .wsi import slide_id

logger = logging.getLogger(__name__)

# The files a run writes beside the slide folders (inference, its shards, evaluation, calibration).
RUN_FILES = re.compile(
    r"(summary|inference)(\.shard-\d+-of-\d+)?\.(csv|log)|metrics\.json|calibration\.json|heatmap_summary\.csv|"
    r"(roc|pr)\.png|report(\.shard-\d+-of-\d+)?\.html",
    re.IGNORECASE,
)


def unusable_id(slide: str) -> str:
    """Why a slide's id cannot name its output folder ('' when it can): the folder would be ``--output_dir`` itself
    or its parent (``..tif``, ``...tif``), hidden among the run's own dot files, or one of the run's files."""
    name = slide_id(slide)
    if name.startswith(".") or not name.strip():
        problem = f"its id {name!r} (the file name without its suffix) is empty or starts with a dot"
    elif any(separator in name for separator in ("/", "\\", "\0")):
        problem = f"its id {name!r} holds a path separator"
    elif RUN_FILES.fullmatch(name):
        problem = f"its id {name!r} is the name of a file the run writes in --output_dir"
    else:
        return ""
    return f"{problem}, so it cannot name an output folder; rename the file."


def unique_slide_ids(slides: Sequence[str]) -> list[str]:
    """The output id of every slide (its file stem), refusing a cohort where two slides would share one folder.

    Ids are compared case-insensitively: on a case-insensitive file system ``S01`` and ``s01`` are one folder.
    """
    seen: dict[str, str] = {}
    for slide in slides:
        key = slide_id(slide).casefold()
        if key in seen:
            raise ValueError(
                f"slides {seen[key]} and {slide} share the output id {slide_id(slide)!r} (the file name without its "
                "suffix); rename one, or score them into separate --output_dir folders."
            )
        seen[key] = slide
    return [slide_id(s) for s in slides]


class RunLogFile(logging.FileHandler):
    """The run's log file, which says once on the console that it cannot be written (a full disk) and then stays
    quiet: logging's own handler prints a traceback for every record it fails to write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        self.failed = True
        error = sys.exc_info()[1]
        reason = write_failure(error) if isinstance(error, OSError) else str(error)
        sys.stderr.write(f"WARNING: cannot write the log file {self.baseFilename}: {reason} It is no longer written.\n")


def record_failure(row: dict, slide: str, error: BaseException) -> None:
    """Log a slide's failure in one line (its traceback to the log file) and mark its summary row."""
    error = reported(error)
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    message = cause if cause.startswith(str(slide)) else f"{slide}: {cause}"  # named once, by whoever raised
    logger.error("%s", message)
    logger.debug("traceback for %s", slide, exc_info=error)
    row.update(status="error", error=message)


def shard_suffix(index: int, num_shards: int) -> str:
    """What a shard adds to the names of its own files; nothing when the cohort is not sharded."""
    return "" if num_shards == 1 else f".shard-{index}-of-{num_shards}"


def merge_shards(output_dir: Path, num_shards: int, cohort: Sequence[str]) -> pd.DataFrame | None:
    """Write ``summary.csv`` from every shard's rows once all shards have written theirs; return it, or None.

    Each shard writes its own file before looking for the others, so the last shard to finish always sees all
    of them; two shards finishing together both write the same merged table.
    """
    paths = [output_dir / f"summary{shard_suffix(i, num_shards)}.csv" for i in range(num_shards)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        logger.info("summary.csv is merged when the other shards finish (waiting for %s)", ", ".join(missing))
        return None
    tables = [read_summary(p) for p in paths]
    rows = pd.concat([t for t in tables if len(t)])
    order = {slide: k for k, slide in enumerate(cohort)}
    merged = rows.sort_values("slide", key=lambda column: column.map(order), kind="stable")
    with atomic_path(output_dir / "summary.csv") as tmp:
        merged.to_csv(tmp, index=False)
    logger.info("merged %d shard summaries into %s", num_shards, output_dir / "summary.csv")
    return merged


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """The package's log records, debug ones included, also go to ``path`` while the run lasts."""
    log_file = RunLogFile(path)
    log_file.setLevel(logging.DEBUG)
    log_file.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    package_logger = logging.getLogger(__package__)
    package_logger.addHandler(log_file)
    package_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        package_logger.removeHandler(log_file)
        log_file.close()


def log_failures(summary: pd.DataFrame, output_dir: Path) -> None:
    failed = int((summary["status"] != "ok").sum())
    logger.info("%d of %d slides scored; summary in %s", len(summary) - failed, len(summary), output_dir)
    if failed:
        lost = summary.loc[summary["status"] != "ok", "slide"]
        logger.error("%d slide(s) failed: %s (causes in summary.csv)", failed, ", ".join(lost))


def refuse_failures(summary: pd.DataFrame, cohort: pd.DataFrame | None, strict: bool, output_dir: Path) -> None:
    """Stop the command when all of the cohort's slides failed (judged on the whole cohort, so that a shard whose few
    slides failed does not stop the other ranks), or any of this shard's did under ``strict``."""
    failed = int((summary["status"] != "ok").sum())
    if cohort is not None and (cohort["status"] != "ok").all():
        raise RuntimeError(f"all {len(cohort)} slides failed; see {output_dir / 'summary.csv'}")
    if strict and failed:
        raise RuntimeError(f"{failed} of {len(summary)} slides failed (strict); see {output_dir / 'summary.csv'}")


class SlideInference:
    """Take every slide of ``slides`` through the stages ``inference.json`` declares: ``preparer`` (open, tissue,
    stain fit, domain) -> ``scorer`` (the evaluator over its patches) -> ``postprocessing`` (z-scores to regions) ->
    ``writers`` (its files); write ``summary.csv``; never let one slide stop the rest.

    A slide's outputs go to ``output_dir/<slide id>/``, the id being the file name without its suffix
    (``summary.csv`` maps each id to its ``path``); two slides with one id are refused before any is scored. Outputs
    made with other ``settings`` (the config's record of what they depend on) are made again, not reused.

    ``num_shards`` > 1 splits the cohort across processes (torchrun ranks or cluster array tasks) that share
    ``output_dir``: shard ``shard_index`` takes every ``num_shards``-th slide, writes its rows to
    ``summary.shard-<i>-of-<n>.csv`` and its log to ``inference.shard-<i>-of-<n>.log``, and whichever shard finishes
    last merges the shard rows into ``summary.csv`` in cohort order, as one process would have written it. A shard
    can be rerun alone; the merge is redone when it finishes.
    """

    def __init__(
        self,
        slides: Sequence[str],
        preparer: SlidePreparer,
        scorer: SlideScorer,
        postprocessing: Callable[[ScoredSlide], ScoredSlide],
        writers: Sequence[SlideWriter],
        report: CohortReport,
        settings: dict,
        output_dir: str | Path,
        overwrite: bool,
        strict: bool,
        shard_index: int,
        num_shards: int,
        overlap: bool | str,
    ) -> None:
        if not slides:
            raise FileNotFoundError("no slides to score: the folder holds no slide file or the datalist is empty.")
        require_number("num_shards", num_shards, 1, integer=True)
        require_number("shard_index", shard_index, 0, num_shards - 1, integer=True)
        # With overlap the next slide is prepared, and the last one written, while a slide is scored; without, the two
        # of them overlap each other between slides. "auto" overlaps beside a model on a GPU only: beside a model on
        # the CPU they took its cores and made each slide slower (bench/research/README.md).
        if overlap not in (True, False, "auto"):
            raise ValueError(f"--overlap must be auto, True or False, got {overlap!r}.")
        self.overlap = scorer.on_gpu if overlap == "auto" else overlap
        self.cohort = unique_slide_ids(slides)
        self.slides = list(slides)[shard_index::num_shards]
        self.num_shards = num_shards
        self.suffix = shard_suffix(shard_index, num_shards)  # of this shard's own files
        self.preparer = preparer
        self.scorer = scorer
        self.postprocessing = postprocessing
        self.writers = list(writers)
        self.report = report
        stages = {"preparer": preparer, "postprocessing": postprocessing, "writers": self.writers}
        self.settings = {**settings, **scorer.settings(), "stages": component_record(stages)}
        self.output_dir = require_output_folder(output_dir)
        self.overwrite = overwrite
        self.strict = strict

    def _written(self, rows: dict[str, dict], slide: str, writing: Future) -> None:
        """Wait for a slide's outputs; a failure to write them fails that slide alone."""
        try:
            writing.result()
        except Exception as error:
            record_failure(rows[slide], slide, error)

    def run(self) -> pd.DataFrame:
        """Score every slide; slides finished by an earlier run of the same command are skipped (``overwrite``
        redoes them). Full tracebacks of failed slides go to ``output_dir/inference.log``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            with (
                run_log(self.output_dir / f"inference{self.suffix}.log"),
                folder_lock(self.output_dir, f".skip96{self.suffix}.lock"),
            ):
                return self._run_all()
        finally:
            self.preparer.close()

    def _report(self, rows: dict[str, dict]) -> pd.DataFrame:
        """The slides' rows as a table, and the report rewritten from them (this shard's own, when sharded)."""
        summary = pd.DataFrame([rows[slide] for slide in self.slides]).reindex(columns=SUMMARY_COLUMNS)
        self.report.write(summary, self.settings, f"report{self.suffix}.html")
        return summary

    def _run_all(self) -> pd.DataFrame:
        """The cohort as one stream: the next slide's grid and stain fit are prepared (in a child process) while the
        previous one's outputs are written (in a thread), and beside a model on a GPU both go on while a slide is
        scored, so a slide costs about what its patches cost; at most one slide's outputs wait, so memory stays that of
        two slides."""
        rows: dict[str, dict] = {}
        todo = []  # (place in the cohort, slide) of the slides to score
        for k, slide in enumerate(self.slides, 1):
            rows[slide] = {"slide": slide_id(slide), "path": str(slide), "status": "ok", "error": ""}
            if problem := unusable_id(slide):
                record_failure(rows[slide], slide, ValueError(problem))
                continue
            done = completed_summary(self.output_dir / slide_id(slide), slide, self.settings, self.overwrite)
            if done is None:
                todo.append((k, slide))
                rows[slide]["status"] = "pending"
                continue
            logger.info("[%d/%d] %s: outputs complete from an earlier run, skipped", k, len(self.slides), slide)
            rows[slide].update(done, seconds=0.0)
        summary_file = self.output_dir / f"summary{self.suffix}.csv"
        if todo:  # a summary describes the slide folders: it goes before any of them changes, and returns at the end
            for stale in {summary_file, self.output_dir / "summary.csv", self.output_dir / REPORT_FILE}:
                stale.unlink(missing_ok=True)
            self._report(rows)
        writing: tuple[str, Future] | None = None
        with (
            ThreadPoolExecutor(1, "skip96-open") as opener,
            ThreadPoolExecutor(1, "skip96-write") as writer,
        ):
            opening = None
            for n, (k, slide) in enumerate(todo, 1):
                start = time.perf_counter()
                preparing = opening or opener.submit(self.preparer, slide)
                following = todo[n][1] if n < len(todo) else None
                opening = opener.submit(self.preparer, following) if self.overlap and following else None
                logger.info("[%d/%d] %s", k, len(self.slides), slide)
                try:
                    result = self.postprocessing(self.scorer(preparing.result()))
                    summary = summary_row(result)
                    rows[slide].update(summary, status="ok")
                except Exception as error:  # one bad slide must not lose the others
                    record_failure(rows[slide], slide, error)
                if writing is not None:
                    self._written(rows, *writing)
                writing = None
                if rows[slide]["status"] == "ok":
                    folder = self.output_dir / slide_id(slide)
                    job = writer.submit(write_slide, result, self.writers, folder, self.settings, summary)
                    writing = (slide, job)
                if not self.overlap and following:
                    opening = opener.submit(self.preparer, following)
                if writing is not None and not self.overlap:
                    self._written(rows, *writing)
                    writing = None
                rows[slide]["seconds"] = round(time.perf_counter() - start, 2)
                self._report(rows)
            if writing is not None:
                self._written(rows, *writing)
        summary = self._report(rows)
        try:
            with atomic_path(summary_file) as tmp:
                summary.to_csv(tmp, index=False)
        except OSError as error:
            raise OutputWriteError(f"cannot write {summary_file}: {write_failure(error)}") from error
        log_failures(summary, self.output_dir)
        cohort = merge_shards(self.output_dir, self.num_shards, self.cohort) if self.num_shards > 1 else summary
        if cohort is not None and self.num_shards > 1:
            self.report.write(cohort, self.settings, REPORT_FILE)
        refuse_failures(summary, cohort, self.strict, self.output_dir)
        return summary
