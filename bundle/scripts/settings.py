"""Settings checked before any work: command-line keys, on/off flags and numeric ranges, each with a one-line error.

A typed mistake must not run with a default instead: ``--bacth_size 8`` would silently score with 64, ``--tta false``
(Fire passes lower-case booleans on as strings, and ``"false"`` is true) would leave augmentation on, and
``--stride 0`` would ask for millions of one-pixel patches.
"""

from __future__ import annotations

import ast
import difflib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from .setting_help import DESCRIPTIONS, STAGES

# The range of each decision setting, wherever it is given: the command line, a calibration file, a sweep.
DECISION_RANGES = {
    "z_threshold": (-20, 20), "min_region_tiles": (1, 10_000), "normal_quantile": (0.0, 1.0),
    "min_slide_score": (-20, 20),
}  # fmt: skip

# ``monai.bundle run`` arguments that are not config overrides.
RUN_ARGUMENTS = ("config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id")


def recorded(value: float) -> float | None:
    """A setting as JSON holds it: an infinite (off) floor or gate as None."""
    return None if math.isinf(value) else value


def require_flags(**flags: object) -> None:
    """Raise a one-line error for the first flag that is not a bool."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(
                f"--{name} must be True or False (capitalised: Fire reads only those as booleans), got {value!r}."
            )


def require_number(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    exclusive_minimum: bool = False,
) -> None:
    """Raise a one-line error naming ``--name`` unless ``value`` is a finite number in range (an integer if asked)."""
    kind = "an integer" if integer else "a number"
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if valid and integer:
        valid = float(value).is_integer()
    if valid and minimum is not None:
        valid = value > minimum if exclusive_minimum else value >= minimum
    if valid and maximum is not None:
        valid = value <= maximum
    if not valid:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        # Fire reads a value that starts with '-' but is no plain number (-inf, -1e) as a flag of its own: True
        got = f"no value (write --{name}=VALUE for a value starting with '-')" if value is True else repr(value)
        raise ValueError(f"--{name} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}, got {got}.")


def override_keys(argv: Sequence[str]) -> list[str]:
    """The ``--key`` names of a ``monai.bundle run`` command line (``--key value`` and ``--key=value``)."""
    return [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--") and len(arg) > 2]


def _argument(argv: Sequence[str], name: str) -> str | None:
    for k, arg in enumerate(argv):
        if arg == f"--{name}" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _config_ids(content: object, prefix: str = "") -> list[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0``) that an override may name."""
    ids = []
    items = content.items() if isinstance(content, dict) else enumerate(content) if isinstance(content, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        ids.append(name)
        ids.extend(_config_ids(value, f"{name}#"))
    return ids


# Top-level entries that build the pipeline rather than set it (the configs' flat knobs are everything else);
# is_main_process is the DDP rank's role, which multi_gpu_train.json derives.
NOT_SETTINGS = (
    "imports",
    "bundle_root",
    "network",
    "dataset",
    "inferer",
    "run",
    "initialize",
    "finalize",
    "is_main_process",
)


def is_setting(key: str, value: object) -> bool:
    """A top-level config entry a user sets (a number, a path, a flag, a list of them), not a component or a step
    (a list of expressions)."""
    if key in NOT_SETTINGS:
        return False
    if isinstance(value, list):
        return not any(isinstance(v, dict | list) or str(v).startswith("$") for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def settings_help(config: dict, files: Sequence[str | Path]) -> str:
    """The workflow's settings, grouped by stage, each with one line on what it does and its default (what an
    expression comes to here, lists elided), for ``--help``: ``monai.bundle run`` has none of its own."""
    settings = [key for key, value in config.items() if is_setting(key, value)]
    parser = ConfigParser(config)
    parser.get_parsed_content("imports", default=[])  # what the expressions below refer to
    width = max(map(len, settings))
    groups: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for key in settings:
        stage, text = DESCRIPTIONS.get(key, ("Other", "(undescribed)"))
        groups.setdefault(stage, []).append(f"  --{key:<{width}}  {text} [{default_text(parser, key, config[key])}]")
    lines = [
        f"Settings of {', '.join(Path(f).name for f in files)}: pass any as --name VALUE (True/False capitalised, "
        "lists as JSON, a value starting with '-' as --name=VALUE); [default]."
    ]
    for stage, entries in groups.items():
        if entries:
            lines += [f"{stage}:", *entries]
    lines.append(
        "Components (preparer, scorer, postprocessing, writers, ...) are replaced by name, a step by its # path: "
        "see bundle/docs/pipeline.md."
    )
    return "\n".join(lines)


def default_text(parser: ConfigParser, key: str, value: object, max_items: int = 6) -> str:
    """A default as a user would type it: what an expression (``$...``) or reference (``@...``) comes to on this
    machine, or the expression itself where it needs a run's data; long lists elided."""
    if isinstance(value, str) and value.startswith(("$", "@")):
        try:
            value = parser.get_parsed_content(key)
        except Exception:  # noqa: BLE001  (a default that needs a run's data or device: the expression is shown)
            return value
    if isinstance(value, list | tuple) and len(value) > max_items:
        shown = ", ".join(f"{v:.3g}" if isinstance(v, float) else repr(v) for v in value[:3])
        return f"[{shown}, ... {len(value)} values]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def reject_unknown_overrides(argv: Sequence[str] | None = None) -> None:
    """Raise a one-line error for a command-line key that no loaded config defines, listing close matches.

    ``monai.bundle run`` adds an unknown ``--key`` to the config as a new, unused entry, so a misspelt knob would
    run with its default without a word. The configs are the ones named by ``--config_file`` (or ``args_file``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file = _argument(argv, "config_file")
    args_file = _argument(argv, "args_file")
    overrides = [key for key in override_keys(argv) if key not in RUN_ARGUMENTS]
    if args_file:
        file_args = ConfigParser.load_config_file(args_file)
        config_file = config_file or file_args.get("config_file")
        overrides += [key for key in file_args if key not in RUN_ARGUMENTS]
    if not config_file:
        return
    if isinstance(config_file, str) and config_file.strip().startswith("["):
        config_file = ast.literal_eval(config_file)
    files = [config_file] if isinstance(config_file, str | Path) else list(config_file)
    config = ConfigParser.load_config_files(files)
    if "help" in overrides:
        print(settings_help(config, files))  # noqa: T201  (the answer to --help, not a log record)
        raise SystemExit(0)
    known = _config_ids(config)
    for key in overrides:
        if _argument(argv, key) == "None" and config.get(key) is not None:
            raise ValueError(
                f"--{key} None is dropped by MONAI's command line, which would keep the default {config[key]!r}; give "
                "a value" + (" (--calibration_file none: no calibration file)." if key == "calibration_file" else ".")
            )
        if key.replace("::", "#") not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else "."
            raise ValueError(f"--{key} is not a setting of {', '.join(Path(f).name for f in files)}{hint}")
