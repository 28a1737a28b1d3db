"""Whole-slide inference throughput: end to end against the bare model, the pipeline's own ceiling, the fixed cost a
slide adds to a cohort, each stage alone and each reading path, and peak memory.

    python bench/infer_throughput.py SLIDE [--copies 6] [--num_workers N] [--read_block N] [--batch_size 64]
        [--repeats 1] [--tta 0|1] [--amp 0|1] [--cudnn_benchmark 0|1]

- end to end: ``run inference`` on the slide as inference.json configures it (tissue grid, stain fit, reading,
  normalisation, model, post-processing and every output file), the median of ``repeats`` runs;
- bare model + score: the model and score alone on as many patches already on the device, timed before and after
  each run (the faster counts: a shared machine's speed drifts), under the same autocast as the evaluator;
- ceiling: the same run with the model replaced by a no-op score (the pipeline's own limit);
- fixed cost a slide: a cohort of ``copies`` links to the slide against one slide, less the bare model's time;
- stages alone, one after the other (no overlap), and the patch rate of each reading path: the DataLoader workers
  reading blocks (inference's), and cuCIM's own multi-location ``read_region`` (one 96-px region per patch, its
  thread pool) with as many threads.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, autocast, flag_overrides, machine, synchronize
from monai.bundle import ConfigParser

from scripts.tiling import PatchGeometry, TissuePatches
from scripts.wsi import make_reader

SAMPLE_PATCHES = 4096  # patches the slower stages are timed on, then extrapolated


class NoOpScore:
    """Stands in for the model: one number per patch (its mean) at no cost, so the run times everything else."""

    def settings(self) -> dict:
        return {}

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        return inputs.mean((1, 2, 3))


class Timed:
    """A stage of the pipeline that keeps how long its last call took."""

    def __init__(self, stage) -> None:
        self.stage, self.seconds = stage, 0.0

    def __call__(self, *args):
        result, self.seconds = timed(self.stage, *args)
        return result


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def parsed(slides: list[str], knobs: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    output_dir = tempfile.mkdtemp(prefix="skip96_bench_")
    parser.update({"dataset": slides, "output_dir": output_dir, "overwrite": True, **knobs})
    return parser


def bare_model_seconds(parser: ConfigParser, n: int) -> float:
    """The model and score alone on ``n`` patches, as the evaluator runs them (``amp``: fp16 autocast on CUDA)."""
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    device, batch_size = parser.get_parsed_content("device"), parser.get_parsed_content("batch_size")
    memory_format = torch.channels_last if parser.get_parsed_content("channels_last") else torch.contiguous_format
    batch = torch.randn(batch_size, 3, 96, 96, device=device).contiguous(memory_format=memory_format)  # as fed
    with torch.inference_mode(), autocast(device, parser.get_parsed_content("amp")):
        inferer(batch, network)  # warm-up (and cuDNN's algorithm search with cudnn_benchmark)
        synchronize(device)
        start = time.perf_counter()
        for first in range(0, n, batch_size):
            inferer(batch[: min(batch_size, n - first)], network)
        synchronize(device)
    return time.perf_counter() - start


def cucim_batched_read_seconds(slide: str, patches: TissuePatches, geometry: PatchGeometry, threads: int) -> float:
    """All patches read with cuCIM's multi-location ``read_region`` (one region per patch, ``threads`` threads),
    extrapolated from the first ``SAMPLE_PATCHES``."""
    from cucim import CuImage

    image = CuImage(slide)
    locations = patches.corners[:SAMPLE_PATCHES, ::-1].tolist()  # cuCIM takes (x, y)
    size = (geometry.read_size, geometry.read_size)
    start = time.perf_counter()
    for batch in image.read_region(locations, size, geometry.level, batch_size=64, num_workers=threads):
        np.asarray(batch)
    return (time.perf_counter() - start) * len(patches) / len(locations)


def further_slide_seconds(slide: str, copies: int, knobs: dict) -> float:
    """What each further slide costs a cohort: a run over ``copies`` links to ``slide`` against a run over one."""
    links = Path(tempfile.mkdtemp(prefix="skip96_cohort_"))
    for k in range(copies):
        (links / f"copy{k}{Path(slide).suffix}").symlink_to(slide)
    cohort = sorted(str(p) for p in links.iterdir())
    _, one = timed(parsed(cohort[:1], knobs).get_parsed_content("runner").run)
    _, many = timed(parsed(cohort, knobs).get_parsed_content("runner").run)
    return (many - one) / (copies - 1)


# The functions a slide's preparation runs, by stage, as (file, function): their cumulative profiled time splits its
# fixed cost.
PREPARE_STAGES = {
    "open + header + level choice": (("wsi_reader.py", "read"), ("tiling.py", "select_geometry")),
    "thumbnail read": (("wsi.py", "read_thumbnail"),),
    "tissue mask": (("tissue.py", "tissue_mask"),),
    "tissue grid": (("tiling.py", "tissue_grid"),),
    "level check": (("tiling.py", "check_level"),),
    "stain-fit patch reads": (("wsi_reader.py", "get_data"),),
    "domain distance": (("domain.py", "distance"),),
    "stain fit": (("stain.py", "slide_fit"),),
}
STAGE_FUNCTIONS = {function: stage for stage, functions in PREPARE_STAGES.items() for function in functions}


def prepare_stage_seconds(preparer, slide: str, repeats: int = 3) -> dict[str, float]:
    """A slide's preparation (what the reading child runs) split by stage: the fastest of ``repeats`` unprofiled
    runs, shared out in proportion to each stage's profiled time."""
    backend = preparer.wsi_reader
    total = min(timed(preparer.read, slide, backend)[1] for _ in range(repeats))
    profile = cProfile.Profile()
    profile.runcall(preparer.read, slide, backend)

    def stage_of(file: str, name: str) -> str | None:
        return STAGE_FUNCTIONS.get((Path(file).name, name))

    profiled = dict.fromkeys(PREPARE_STAGES, 0.0)
    whole = 0.0
    # pstats' raw table: (file, line, name) -> (calls, primitive calls, own time, cumulative time, callers)
    for (file, _, name), (_, _, _, cumulative, callers) in pstats.Stats(profile).stats.items():
        if (Path(file).name, name) == ("prepare.py", "read"):
            whole = cumulative
        stage = stage_of(file, name)
        if stage:  # the time of calls from outside the stages: get_data in read_thumbnail is the thumbnail's
            profiled[stage] += sum(t[3] for (f, _, caller), t in callers.items() if not stage_of(f, caller))
    shares = {stage: total * seconds / whole for stage, seconds in profiled.items()}
    shares["other"] = total - sum(shares.values())
    return {"prepare (child process), all": total, **{f"  {stage}": seconds for stage, seconds in shares.items()}}


def stage_seconds(parser: ConfigParser, slide: str) -> dict[str, float]:
    """Each stage alone on this slide, in the order the pipeline runs them; stain and intensity normalisation is timed
    on the first ``SAMPLE_PATCHES`` patches and extrapolated, so that no stage holds the slide in memory."""
    preparer, loaders = parser.get_parsed_content("preparer"), parser.get_parsed_content("patch_loaders")
    prepared, probe = timed(preparer, slide)
    preparer.close()
    patches, geometry = prepared.tiling.patches, prepared.tiling.geometry
    loader = loaders(make_reader(prepared.reader), slide, patches, geometry)
    kept = []
    start = time.perf_counter()
    for batch in loader:
        if sum(len(b["index"]) for b in kept) < SAMPLE_PATCHES:
            kept.append(batch)
    read = time.perf_counter() - start
    cucim = cucim_batched_read_seconds(slide, patches, geometry, max(1, loaders.num_workers))
    device = parser.get_parsed_content("device")
    prepare_batch = parser.get_parsed_content("prepare_batch").for_slide(prepared.stain_fit)
    start = time.perf_counter()
    for batch in kept:
        prepare_batch(batch, device)
    synchronize(device)
    normalise = (time.perf_counter() - start) * len(patches) / sum(len(b["index"]) for b in kept)
    return {
        "tissue grid + stain fit (child process)": probe,
        f"read: DataLoader, {loaders.num_workers} workers, blocks": read,
        f"read: cuCIM batched, {max(1, loaders.num_workers)} threads (sampled)": cucim,
        "stain + intensity (batched, sampled)": normalise,
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("slide")
    cli.add_argument("--copies", type=int, default=6, help="cohort size for the fixed cost a slide (0: skip)")
    cli.add_argument("--num_workers", type=int, help="default: inference.json's")
    cli.add_argument("--batch_size", type=int, help="default: inference.json's")
    cli.add_argument("--read_block", type=int, help="patches per block side of one read (default: inference.json's)")
    cli.add_argument("--repeats", type=int, default=1, help="end-to-end runs; medians are reported")
    cli.add_argument("--tta", type=int, choices=(0, 1), help="score in 8 orientations (default: inference.json's)")
    cli.add_argument("--amp", type=int, choices=(0, 1), help="fp16 autocast on CUDA (default: inference.json's)")
    cli.add_argument("--cudnn_benchmark", type=int, choices=(0, 1), help="default: inference.json's")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)
    slide = str(Path(args.slide).resolve())
    knobs = {k: getattr(args, k) for k in ("num_workers", "batch_size", "read_block") if getattr(args, k) is not None}
    knobs.update(flag_overrides(args, ("tta", "amp", "cudnn_benchmark")))
    parser = parsed([slide], knobs)
    torch.backends.cudnn.benchmark = parser.get_parsed_content("cudnn_benchmark")  # as the workflow's initialize
    runner = parser.get_parsed_content("runner")
    runner.postprocessing = Timed(runner.postprocessing)
    runner.writers = [Timed(writer) for writer in runner.writers]
    totals, bares = [], []
    for _ in range(args.repeats):
        bare_before = bare_model_seconds(parser, 2000) / 2000
        summary, total = timed(runner.run)
        n = int(summary.loc[0, "n_patches"])
        totals.append(total)
        bares.append(min(bare_before * n, bare_model_seconds(parser, n)))
    post, write = runner.postprocessing.seconds, sum(writer.seconds for writer in runner.writers)
    total, bare = float(np.median(totals)), float(np.median(bares))
    ceiling_runner = parsed([slide], knobs).get_parsed_content("runner")
    ceiling_runner.scorer.evaluator.inferer = NoOpScore()
    _, ceiling = timed(ceiling_runner.run)
    fixed = further_slide_seconds(slide, args.copies, knobs) - bare if args.copies > 1 else None
    stages = {**prepare_stage_seconds(runner.preparer, slide), **stage_seconds(parser, slide)}
    stages["model + score (bare)"] = bare
    stages["post-process (z, regions)"] = post
    stages["write outputs (thread, off the critical path)"] = write

    print(f"machine: {machine()}")
    settings = ("num_workers", "batch_size", "read_block", "tta", "amp", "cudnn_benchmark", "channels_last",
                "cpu_bf16")  # fmt: skip
    print(f"slide {args.slide}: {n} patches, " + ", ".join(f"{k} {parser.get_parsed_content(k)}" for k in settings))
    print(f"{'measure':<50}{'patches/s':>12}{'seconds':>10}")
    print(f"{'end to end, one slide (median of ' + str(args.repeats) + ')':<50}{n / total:>12.1f}{total:>10.2f}")
    print(f"{'bare model + score':<50}{n / bare:>12.1f}{bare:>10.2f}")
    print(f"{'ratio bare / end to end':<50}{bare / total:>12.2f}")
    print(f"{'pipeline ceiling (model replaced by a no-op)':<50}{n / ceiling:>12.1f}{ceiling:>10.2f}")
    if fixed is not None:
        print(f"{f'fixed cost a slide (cohort of {args.copies} copies)':<50}{'':>12}{fixed:>10.2f}")
    print("stages alone (no overlap):")
    for name, seconds in stages.items():
        rate = f"{n / seconds:.1f}" if seconds > 1e-3 else "-"
        print(f"  {name:<48}{rate:>12}{seconds:>10.3f}")
    own, child = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"peak host memory (max RSS): this process {own:.2f} GB, largest child process {child:.2f} GB")
    if torch.cuda.is_available():
        print(f"peak GPU memory (allocated by torch) {torch.cuda.max_memory_allocated() / 2**30:.2f} GB")
    print(f"cores {os.cpu_count()}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
