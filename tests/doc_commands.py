"""Every shell command in the fenced blocks of README.md and bundle/docs/*.md, and how the tests run it.

A command runs verbatim, through ``bash``, in a throwaway copy of the checkout (README from its root, the model card
from its ``bundle/``, as each says), with the shipped defaults: only its placeholders are bound to fixture data, and
where a command must be shortened the one setting that does it is named in ``COMMANDS`` beside it. The copy's
``bundle/`` comes first on the import path, so outputs a command sends into the bundle (``runs/``, ``eval/``) land in
the copy, and ``python`` and ``torchrun`` are the test environment's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO

DOCS = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "bundle" / "docs").glob("*.md")))


@dataclass(frozen=True)
class Run:
    """How the test runs one documented command."""

    bind: dict[str, str] = field(default_factory=dict)  # placeholder -> fixture (see ``fixture_data``)
    shorten: tuple[str, ...] = ()  # the one setting added to keep CI short, named here and nowhere else
    after: str | None = None  # a command that must have run first, in the same copy of the checkout
    expect: tuple[str, ...] = ()  # files the command must write (placeholders bound, relative to where it runs)
    skip: str | None = None  # why it cannot run in the tests


README_TRAIN = "python -m monai.bundle run training --config_file bundle/configs/train.json --dataset_dir DIR"
HEAD_CONFIGS = "\"['bundle/configs/train.json','bundle/configs/train_head.json']\""
README_TRAIN_HEAD = f"python -m monai.bundle run train_head --config_file {HEAD_CONFIGS} --dataset_dir DIR"
CARD_TRAIN = "python -m monai.bundle run training --config_file configs/train.json --dataset_dir DIR"
RECIPE = "\"['configs/train.json','configs/shipped_recipe.json']\""
EVALUATE = "\"['bundle/configs/inference.json','bundle/configs/evaluate.json']\""
CARD_EVALUATE = "\"['configs/inference.json','configs/evaluate.json']\""
SHIPPED_CALIBRATION_SLIDES = (
    "python ../tools/sparse_slides.py CAL --tiles_dir TILES --normals_dir NORMALS --normal_slides 12 "
    "--normals_part rest --seed 1"
)


def calibrate(configs: str) -> str:
    return (
        f"python -m monai.bundle run calibrate --config_file {configs} --dataset_dir CAL --annotation_dir ANN "
        "--output_dir CAL_OUT"
    )


def evaluate(configs: str) -> str:
    return (
        f"python -m monai.bundle run evaluate --config_file {configs} --dataset_dir TEST --annotation_dir ANN "
        "--output_dir TEST_OUT --calibration_file CAL_OUT/calibration.json"
    )


def evaluation_rows(doc: str, configs: str, prefix: str, expect: tuple[str, ...]) -> dict[tuple[str, str], Run]:
    """A doc's calibrate command and the evaluate command that applies its calibration, on the demo slide."""
    cal_out = f"{prefix}cal_out"
    return {
        (doc, calibrate(configs)): Run(
            bind={"CAL": "annotated", "ANN": "annotated", "CAL_OUT": cal_out}, expect=("CAL_OUT/calibration.json",)
        ),
        (doc, evaluate(configs)): Run(
            bind={"TEST": "annotated", "ANN": "annotated", "TEST_OUT": f"{prefix}test_out", "CAL_OUT": cal_out},
            after=f"{doc}::{calibrate(configs)}",
            expect=expect,
        ),
    }


ONE_EPOCH = ("--max_epochs", "1")  # training's 30 (the recipe's 10) epochs, cut to one
SUMMARY = ("OUT/summary.csv", "OUT/demo_a/regions.geojson", "OUT/demo_b/heatmap.png")
MODEL = ("bundle/runs/models/model.pt", "bundle/runs/models/normal_stats.pt")
CARD_MODEL = ("runs/models/model.pt", "runs/models/normal_stats.pt")

# (document, command as written) -> how it runs. Placeholders: SLIDES/DIR (inference) two copies of the demo slide;
# CAL/TEST with ANN the demo slide and its annotation; DIR (training) PCam HDF5 files; TILES/DIR (tiles) images/ and
# masks/; slides.json two normal slides; OUT, CAL_OUT, TEST_OUT empty folders; N is 2 (CPU processes); TILES and NORMALS
# of the calibration slides six 512-px tiles and 60 normal patches.
COMMANDS: dict[tuple[str, str], Run] = {
    ("README.md", "make demo"): Run(
        expect=("demo_output/camelyon16_demo/regions.geojson", "demo_output/summary.csv", "demo_output/report.html")
    ),
    ("README.md", "make test"): Run(skip="it is the command that runs these tests"),
    (
        "README.md",
        "python -m monai.bundle run inference --config_file bundle/configs/inference.json --dataset_dir SLIDES "
        "--output_dir OUT",
    ): Run(bind={"SLIDES": "slides", "OUT": "out"}, expect=SUMMARY),
    **evaluation_rows(
        "README.md", EVALUATE, "", ("TEST_OUT/metrics.json", "TEST_OUT/lesions.csv", "TEST_OUT/report.html")
    ),
    ("README.md", README_TRAIN): Run(bind={"DIR": "pcam"}, shorten=ONE_EPOCH, expect=MODEL),
    ("README.md", f"{README_TRAIN} --resume True"): Run(
        bind={"DIR": "pcam"}, shorten=("--max_epochs", "2"), after=f"README.md::{README_TRAIN}", expect=MODEL
    ),
    (
        "README.md",
        "python -m monai.bundle run training --config_file bundle/configs/train.json --data_source tiles "
        "--dataset_dir DIR",
    ): Run(bind={"DIR": "tiles"}, shorten=ONE_EPOCH, expect=MODEL),
    (
        "README.md",
        "python -m monai.bundle run training --config_file bundle/configs/train.json --data_source wsi --datalist "
        "slides.json",
    ): Run(bind={"slides.json": "normal_slides"}, shorten=ONE_EPOCH, expect=MODEL),
    (
        "README.md",
        "torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
        "\"['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']\" --dataset_dir DIR",
    ): Run(bind={"N": "2", "DIR": "pcam"}, shorten=ONE_EPOCH, expect=MODEL),
    (
        "README.md",
        "torchrun --nproc_per_node=N -m monai.bundle run inference --config_file bundle/configs/inference.json "
        "--dataset_dir SLIDES --output_dir OUT",
    ): Run(bind={"N": "2", "SLIDES": "slides", "OUT": "out"}, expect=SUMMARY),
    ("README.md", README_TRAIN_HEAD): Run(
        bind={"DIR": "pcam"}, shorten=ONE_EPOCH, expect=("bundle/runs/models/head.pt",)
    ),
    (
        "README.md",
        "python -m monai.bundle run inference --config_file bundle/configs/inference.json --score head --head_path "
        "bundle/runs/models/head.pt --dataset_dir SLIDES --output_dir OUT",
    ): Run(bind={"SLIDES": "slides", "OUT": "head_out"}, after=f"README.md::{README_TRAIN_HEAD}", expect=SUMMARY),
    ("bundle/docs/README.md", CARD_TRAIN): Run(bind={"DIR": "pcam"}, shorten=ONE_EPOCH, expect=CARD_MODEL),
    (
        "bundle/docs/README.md",
        "python -m monai.bundle run train_head --config_file \"['configs/train.json','configs/train_head.json']\" "
        "--dataset_dir DIR",
    ): Run(bind={"DIR": "pcam"}, shorten=ONE_EPOCH, expect=("runs/models/head.pt",)),
    (
        "bundle/docs/README.md",
        "torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
        "\"['configs/train.json','configs/multi_gpu_train.json']\" --dataset_dir DIR",
    ): Run(bind={"N": "2", "DIR": "pcam"}, shorten=ONE_EPOCH, expect=CARD_MODEL),
    (
        "bundle/docs/README.md",
        f"python -m monai.bundle run training --config_file {RECIPE} --dataset_dir TILES",
    ): Run(bind={"TILES": "tiles"}, shorten=ONE_EPOCH, expect=CARD_MODEL),
    (
        "bundle/docs/README.md",
        f"python -m monai.bundle run write_normal_stats --config_file {RECIPE} --dataset_dir TILES",
    ): Run(
        bind={"TILES": "tiles"},
        after=f"bundle/docs/README.md::python -m monai.bundle run training --config_file {RECIPE} --dataset_dir TILES",
        expect=("runs/models/normal_stats.pt",),
    ),
    ("bundle/docs/README.md", "python -m monai.bundle run --config_file configs/inference.json"): Run(
        expect=("eval/summary.csv", "eval/camelyon16_demo/regions.xml")
    ),
    (
        "bundle/docs/README.md",
        "python -m monai.bundle run inference --config_file configs/inference.json --dataset_dir DIR --output_dir OUT",
    ): Run(bind={"DIR": "slides", "OUT": "out"}, expect=SUMMARY),
    **evaluation_rows(
        "bundle/docs/README.md",
        CARD_EVALUATE,
        "card_",
        ("TEST_OUT/metrics.json", "TEST_OUT/camelyon16_demo/overlay.png"),
    ),
    (
        "bundle/docs/README.md",
        "python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json --config_file "
        "configs/inference.json",
    ): Run(),
    (
        "bundle/docs/README.md",
        "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
        "--meta_file configs/metadata.json --config_file configs/inference.json",
    ): Run(expect=("models/model.ts",)),
    ("bundle/docs/README.md", "python -m monai.bundle download_large_files --bundle_path ."): Run(),
    ("bundle/docs/README.md", SHIPPED_CALIBRATION_SLIDES): Run(
        bind={"TILES": "calibration_tiles", "NORMALS": "normal_patches", "CAL": "cal_slides"},
        expect=("CAL/sparse_05.xml", "CAL/normal_11.tif"),
    ),
}


def command_key(doc: str, command: str) -> str:
    return f"{doc}::{command}"


def strip_comment(line: str) -> str:
    """``line`` without a shell comment: a ``#`` that starts a word outside quotes."""
    quote = None
    for k, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def documented_commands(doc: str) -> list[str]:
    """The commands of ``doc``'s fenced shell blocks in order, continuation lines joined and spacing normalised."""
    text = (REPO / doc).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            command = " ".join(strip_comment(line).split())
            if command:
                commands.append(command)
    return commands


def all_documented() -> list[tuple[str, str]]:
    return [(doc, command) for doc in DOCS if (REPO / doc).exists() for command in documented_commands(doc)]


def bind(text: str, places: dict[str, str], data: dict[str, Path]) -> str:
    """``text`` with each placeholder replaced, as a whole word, by its fixture's path (or a literal like N's 2)."""
    for placeholder, fixture in places.items():
        value = str(data[fixture]) if fixture in data else fixture
        text = re.sub(rf"(?<![\w.-]){re.escape(placeholder)}(?![\w.-])", value, text)
    return text


def checkout_copy(root: Path) -> Path:
    """A copy of what a user's checkout holds (no environment, no outputs), with the test environment's .venv linked
    in so that ``make`` finds it built."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "runs", "eval", "demo_output", ".*")
    shutil.copytree(REPO, root, ignore=ignore, symlinks=True)
    if (REPO / ".venv").exists():
        (root / ".venv").symlink_to(REPO / ".venv")
    return root


@dataclass
class Ran:
    checkout: Path
    result: subprocess.CompletedProcess


def run_documented(doc: str, command: str, data: dict[str, Path], done: dict[str, Ran], scratch: Path) -> Ran:
    """Run one documented command (and the command it needs first) once; later calls return the first result."""
    key = command_key(doc, command)
    if key in done:
        return done[key]
    spec = COMMANDS[(doc, command)]
    if spec.after:
        checkout = run_documented(*spec.after.split("::", 1), data, done, scratch).checkout
    else:
        checkout = checkout_copy(scratch / f"checkout{len(done)}")
    cwd = checkout / "bundle" if doc.startswith("bundle/") else checkout  # the model card runs from the bundle
    line = " ".join([bind(command, spec.bind, data), *spec.shorten])
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(checkout / "bundle"), str(checkout)]),
    }
    result = subprocess.run(["bash", "-c", line], cwd=cwd, env=environment, capture_output=True, text=True, timeout=900)
    done[key] = Ran(checkout, result)
    return done[key]
