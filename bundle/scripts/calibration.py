"""The calibration file: the decision settings chosen on annotated slides, tied to the weights and score settings.

``Evaluation.calibrate`` writes it (``write_calibration``); inference reads each calibrated value through
``calibrated``, which refuses a file made for other weights or other score settings.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

from .atomic import atomic_path
from .model_files import checkpoint_digest
from .scores import AnomalyScore
from .settings import DECISION_RANGES, recorded, require_number

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
# The settings a calibration may switch off, and their off values: a file holds null for off (JSON has no infinity), and
# one written before a setting existed does not hold it, its decision having had none.
OFF_VALUES = {"normal_quantile": 0.0, "min_slide_score": -math.inf}
SHIPPED_CALIBRATION = Path(__file__).resolve().parents[1] / "models" / CALIBRATION_FILE


def scoring_settings(score: AnomalyScore, **settings: object) -> dict:
    """What a slide's z-scores depend on besides the weights, as a calibration records it: the score's settings and
    ``settings`` (grid, stain, per-slide statistic, ...)."""
    return {**score.settings(), **settings}


def output_settings(scoring: dict, **settings: object) -> dict:
    """What a slide's outputs depend on: the ``scoring`` record extended by the tissue, reading and decision
    ``settings``, an infinite (off) floor or gate held as None, as JSON holds it. A finished slide whose
    ``complete.json`` records other settings is scored again."""
    return {
        **scoring,
        **{name: recorded(value) if isinstance(value, float) else value for name, value in settings.items()},
    }


def calibrated(
    name: str, default: float, calibration_file: str | Path | None, ckpt_path: str | Path | None = None,
    scoring: dict | None = None,
) -> float:  # fmt: skip
    """``name`` from a calibration JSON when one is given (it must hold it, as a number in range), else ``default``.

    A threshold is calibrated for one model's scores under one set of ``scoring`` settings (score, per-slide statistic,
    grid, ...): a file that records other weights or other settings is refused, except the shipped calibration (the
    default), which then gives way to ``default`` with a warning: a user's own model or score has no calibration until
    they run one.
    """
    if no_calibration(calibration_file):
        return default
    path = Path(calibration_file)
    if path.is_dir():
        raise IsADirectoryError(f"calibration_file {path} is a folder; give the calibration.json that calibrate wrote.")
    if not path.is_file():
        raise FileNotFoundError(f"calibration_file {path} not found; run calibrate first or drop --calibration_file.")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"calibration_file {path} is not valid JSON ({error}).") from None
    if isinstance(content, dict) and name in OFF_VALUES and content.get(name) is None:
        return default
    if not isinstance(content, dict) or name not in content:
        held = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise KeyError(f"calibration_file {path} has no {name!r}; it holds {held}.")
    if mismatch := calibration_mismatch(content, ckpt_path, scoring):
        if path.resolve() == SHIPPED_CALIBRATION:
            logger.warning(
                "%s is the shipped model's calibration, made %s: %s %s (uncalibrated); run calibrate for this model "
                "and these settings.", path, mismatch, name, default,
            )  # fmt: skip
            return default
        raise ValueError(
            f"calibration_file {path} was calibrated {mismatch}; run calibrate with this model and these settings, or "
            "pass --calibration_file none with --z_threshold and --min_region_tiles."
        )
    if scoring is not None and "scoring" not in content:
        warn_once(f"calibration_file {path} records no score settings (written before version 0.9.0); it is applied "
                  f"as is: make sure it was calibrated with {scoring}.")  # fmt: skip
    low, high = DECISION_RANGES[name]
    try:
        require_number(name, content[name], low, high, integer=isinstance(default, int))
    except ValueError as error:
        raise ValueError(f"calibration_file {path}: {error}") from None
    return type(default)(content[name])


def calibration_mismatch(content: dict, ckpt_path: str | Path | None, scoring: dict | None) -> str:
    """Why a calibration's recorded weights or score settings do not fit this run ('' when they do, or when the
    file or the caller does not say)."""
    recorded = content.get("weights")
    if ckpt_path is not None and recorded is not None and recorded != checkpoint_digest(ckpt_path):
        return f"for other weights than ckpt_path {ckpt_path}"
    calibrated_with = content.get("scoring")
    if not isinstance(calibrated_with, dict) or scoring is None:
        return ""
    changed = [
        f"{key} {calibrated_with[key]!r}, now {scoring[key]!r}"
        for key in sorted(set(calibrated_with) & set(scoring))
        if not same_setting(calibrated_with[key], scoring[key])
    ]
    return f"with other score settings ({'; '.join(changed)})" if changed else ""


def same_setting(a: object, b: object) -> bool:
    """Equal, numbers to a relative 1e-6 (a JSON round trip, or 0 given for 0.0, changes nothing)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-6) if numbers else a == b


@functools.cache
def warn_once(message: str) -> None:
    """A warning that the two calibrated values of one run would otherwise give twice."""
    logger.warning(message)


def no_calibration(calibration_file: str | Path | None) -> bool:
    """Whether the run has no calibration file: ``none`` (or an empty string), since MONAI's command line drops a
    ``None`` and would keep the default file."""
    return not calibration_file or str(calibration_file).strip().lower() == "none"


def thresholds_calibrated(
    calibration_file: str | Path | None, ckpt_path: str | Path, scoring: dict | None = None, **values: float
) -> bool:
    """Whether each of ``values`` (``z_threshold=...``) is the one ``calibration_file`` holds for this model and these
    settings: what ``metrics.json`` records as calibrated. A value set by hand on the command line is not."""
    if no_calibration(calibration_file) or not Path(calibration_file).is_file():
        return False
    content = json.loads(Path(calibration_file).read_text())
    if calibration_mismatch(content, ckpt_path, scoring):
        return False
    held = {name: content.get(name) for name in values}
    held |= {name: OFF_VALUES[name] for name in values if name in OFF_VALUES and held[name] is None}
    return all(held[name] is not None and same_setting(held[name], value) for name, value in values.items())


def write_calibration(folder: str | Path, calibration: dict) -> Path:
    """Write ``calibration`` as ``folder/calibration.json`` (atomically: a kill leaves the old file or the new)."""
    path = Path(folder) / CALIBRATION_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(calibration, indent=4) + "\n")
    return path
