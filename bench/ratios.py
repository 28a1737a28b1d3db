"""The throughput ratios that guard the inference pipeline, beside the committed ones (``make bench``).

    python bench/ratios.py [--copies 6] [--repeats 3] [--record]

Each ratio is taken within one run: the bare model + score on as many patches, against what the pipeline spends on
the same slide seconds apart on the same machine. A ratio travels between runs and machines far better than a time,
which drifts with the machine's load. Ratios:

- ``further demo slide``: bare / what each further demo slide (210 patches) costs a cohort of ``copies``;
- ``further mosaic slide``: the same for the demo mosaic (the demo's held-out tissue mirrored 2 x 2, ~880 patches);
- ``one mosaic slide``: bare / a cohort of the mosaic alone, end to end (reader start included).

A ratio more than ``TOLERANCE`` below the committed one (``bench/results/cpu/ratios.json``) is flagged, and the exit
status is 1. ``--record`` writes the measured ratios there instead. Not a test: a shared machine's timing is too noisy
to gate CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import BUNDLE, DEMO_SLIDE, demo_mosaic, machine
from infer_throughput import bare_model_seconds, further_slide_seconds, parsed

from scripts.atomic import atomic_path

RESULTS = Path(__file__).resolve().parent / "results" / "cpu" / "ratios.json"
TOLERANCE = 0.25
COMMAND = "make bench  (cd bench && python ratios.py)"


def slide_ratios(slide: str, copies: int, repeats: int) -> tuple[dict[str, float], int, float, float]:
    """Bare / further slide and bare / one slide (medians over ``repeats``, the bare time taken before and after each
    repeat, as the machine drifts), the slide's patch count, its bare time and its further-slide time."""
    parser = parsed([slide], {})
    patches = int(parser.get_parsed_content("runner").run().loc[0, "n_patches"])
    further, one, ratios = [], [], {"further": [], "one": []}
    for _ in range(repeats):
        before = bare_model_seconds(parser, patches)
        further.append(further_slide_seconds(slide, copies, {}))
        start = time.perf_counter()
        parsed([slide], {}).get_parsed_content("runner").run()
        one.append(time.perf_counter() - start)
        bare = (before + bare_model_seconds(parser, patches)) / 2
        ratios["further"].append(bare / further[-1])
        ratios["one"].append(bare / one[-1])
    bare = bare_model_seconds(parser, patches)
    return {k: float(np.median(v)) for k, v in ratios.items()}, patches, bare, float(np.median(further))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--copies", type=int, default=6, help="cohort size for the further-slide cost")
    cli.add_argument("--repeats", type=int, default=3, help="measurements a ratio is the median of")
    cli.add_argument("--record", action="store_true", help=f"write the ratios to {RESULTS}")
    args = cli.parse_args()
    logging.disable(logging.INFO)  # the runs' own per-slide lines
    mosaic = demo_mosaic(Path(tempfile.mkdtemp(prefix="skip96_bench_")) / "demo_mosaic.tif")
    measured, notes = {}, []
    for name, slide in (("demo", DEMO_SLIDE), ("mosaic", mosaic)):
        ratios, patches, bare, further = slide_ratios(str(slide), args.copies, args.repeats)
        measured[f"further {name} slide"] = round(ratios["further"], 3)
        if name == "mosaic":
            measured["one mosaic slide"] = round(ratios["one"], 3)
        notes.append(f"{name}: {patches} patches, bare {bare:.2f} s, further slide {further:.2f} s, "
                     f"fixed cost {further - bare:.2f} s")  # fmt: skip
    committed = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"ratios": {}}
    print(f"machine: {machine()}")
    print(*notes, sep="\n")
    print(f"{'ratio (bare model + score / pipeline)':<40}{'measured':>10}{'committed':>11}  ")
    dropped = []
    for name, ratio in measured.items():
        before = committed["ratios"].get(name)
        flag = ""
        if before is not None and ratio < (1 - TOLERANCE) * before:
            flag = f"DROPPED more than {TOLERANCE:.0%}"
            dropped.append(name)
        print(f"{name:<40}{ratio:>10.2f}{before if before is not None else '-':>11}  {flag}")
    if args.record:
        with atomic_path(RESULTS) as tmp:
            version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
            record = {"version": version, "command": COMMAND, "date": date.today().isoformat(), "machine": machine(),
                      "notes": notes, "ratios": measured}  # fmt: skip
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        print(f"recorded in {RESULTS}")
    elif dropped:
        print(f"regression: {', '.join(dropped)} (committed in {RESULTS})")
        sys.exit(1)


if __name__ == "__main__":
    main()
