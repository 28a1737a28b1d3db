"""Whole-slide inference throughput: the end-to-end run against the bare model on the same number of patches.

    python bench/infer_throughput.py bundle/sample_data/camelyon16_demo.tif [--num_workers 2 --batch_size 64]
        [--repeats 5]

The end-to-end figure is ``run inference`` on one slide as inference.json configures it (tissue grid, reading, stain
normalisation, model, post-processing and every output file). The bare figure is the model and score alone on
patches already in memory, timed before and after the run (the faster counts). The breakdown times each stage on
its own, one after the other, so it shows where the time would go without overlap; in the real run DataLoader workers
read while the main process normalises and scores.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, autocast, flag_overrides, machine, synchronize
from monai.bundle import ConfigParser

from scripts.device_read import device_reader
from scripts.inference import slide_dataset
from scripts.wsi import make_reader, slide_patches


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bare_model_seconds(parser: ConfigParser, n: int, batch_size: int) -> float:
    """The model and score alone, as the evaluator runs them (``amp``: fp16 autocast on CUDA)."""
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    device = parser.get_parsed_content("device")
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


def stage_seconds(parser: ConfigParser, slide: str, batch_size: int) -> dict[str, float]:
    """Each stage alone, on this slide's patches, in the order the pipeline runs them (patches decoded where
    ``read_device`` says)."""
    runner = parser.get_parsed_content("runner")
    reader = make_reader(runner.wsi_reader)
    (samples, geometry, _), grid = timed(slide_patches, slide, reader, assume_mpp=runner.assume_mpp, **runner.grid_args)
    if runner.read_device != "cpu":
        reader = device_reader(runner.read_device, reader, slide, geometry.level)
    dataset = slide_dataset(reader, samples, geometry, runner.read_block)
    prepare_batch, device = parser.get_parsed_content("prepare_batch"), parser.get_parsed_content("device")
    start = time.perf_counter()
    patches = [item["image"] for block in dataset for item in block]  # blocks of read_block x read_block, cut
    synchronize(device)
    read = time.perf_counter() - start
    hwc = [np.moveaxis(p[:3].cpu().numpy(), 0, -1) for p in patches[:: max(1, len(patches) // 256)]]
    start = time.perf_counter()
    runner.stain.fit_slide(hwc[:: max(1, len(hwc) // runner.stain_fit_patches)], slide)
    for first in range(0, len(patches), batch_size):
        prepare_batch({"image": torch.stack(patches[first : first + batch_size])}, device)
    synchronize(device)
    normalise = time.perf_counter() - start
    return {"tissue grid (thumbnail + mask)": grid, f"read patches (decoded on {runner.read_device})": read,
            "stain + intensity (batched)": normalise}  # fmt: skip


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("slide")
    cli.add_argument("--num_workers", type=int, default=2)
    cli.add_argument("--batch_size", type=int, default=64)
    cli.add_argument("--wsi_reader", default="cuCIM")
    cli.add_argument("--read_device", help="where tiles are decoded: cpu or cuda (default: inference.json's)")
    cli.add_argument("--read_block", type=int, default=4, help="patches per block side of one read (1: per patch)")
    cli.add_argument("--trim_memory_every", type=int, help="iterations between malloc_trim calls (0: none)")
    cli.add_argument("--repeats", type=int, default=1, help="end-to-end runs; medians are reported")
    cli.add_argument("--tta", type=int, choices=(0, 1), help="score in 8 orientations (default: inference.json's)")
    cli.add_argument("--amp", type=int, choices=(0, 1), help="fp16 autocast on CUDA (default: inference.json's)")
    cli.add_argument("--cudnn_benchmark", type=int, choices=(0, 1), help="default: inference.json's")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)
    output_dir = tempfile.mkdtemp(prefix="skip96_bench_")
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    knobs = {"num_workers": args.num_workers, "batch_size": args.batch_size, "wsi_reader": args.wsi_reader,
             "read_block": args.read_block}  # fmt: skip
    if args.trim_memory_every is not None:
        knobs["trim_memory_every"] = args.trim_memory_every
    if args.read_device is not None:
        knobs["read_device"] = args.read_device
    knobs.update(flag_overrides(args, ("tta", "amp", "cudnn_benchmark")))
    parser.update({"dataset": [str(Path(args.slide).resolve())], "output_dir": output_dir, "overwrite": True, **knobs})
    runner = parser.get_parsed_content("runner")
    torch.backends.cudnn.benchmark = parser.get_parsed_content("cudnn_benchmark")  # as the `inference` workflow sets it
    # Each end-to-end run sits between two timings of the bare model, the faster of which is its reference: this
    # VM's speed drifts by 20 % and more within minutes, so with --repeats the median over the runs is reported.
    totals, bares = [], []
    for _ in range(args.repeats):
        bare_before = bare_model_seconds(parser, 2000, args.batch_size) / 2000
        summary, total = timed(runner.run)
        n = int(summary.loc[0, "n_patches"])
        totals.append(total)
        bares.append(min(bare_before * n, bare_model_seconds(parser, n, args.batch_size)))
    _, post_seconds = timed(runner.postprocessor.finish, runner.evaluator)  # the slide's outputs again, from its scores
    ratios = [bare / total for bare, total in zip(bares, totals, strict=True)]
    total, bare = float(np.median(totals)), float(np.median(bares))
    stages = stage_seconds(parser, str(Path(args.slide).resolve()), args.batch_size)
    stages["model + score (bare)"] = bare
    stages["post-process + write outputs"] = post_seconds
    print(f"machine: {machine()}")
    settings = ("num_workers", "batch_size", "wsi_reader", "read_device", "read_block", "tta", "amp",
                "cudnn_benchmark", "channels_last", "cpu_bf16")  # fmt: skip
    print(f"slide {args.slide}: {n} patches, " + ", ".join(f"{k} {parser.get_parsed_content(k)}" for k in settings))
    print(f"{'measure (median of ' + str(args.repeats) + ' runs)':<44}{'patches/s':>12}{'seconds':>10}")
    print(f"{'ratio end-to-end / bare model':<44}{float(np.median(ratios)):>12.2f}")
    if args.repeats > 1:
        print(f"{'  each run':<44}{', '.join(f'{r:.2f}' for r in ratios):>22}")
    print(f"{'end-to-end run inference':<44}{n / total:>12.1f}{total:>10.2f}")
    print(f"{'bare model + score, in memory':<44}{n / bare:>12.1f}{bare:>10.2f}")
    print("stages alone (no overlap):")
    for name, seconds in stages.items():
        print(f"  {name:<42}{n / seconds:>12.1f}{seconds:>10.2f}")
    own, child = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"peak host memory (max RSS): this process {own:.2f} GB, largest DataLoader worker {child:.2f} GB")
    if torch.cuda.is_available():
        print(f"peak GPU memory (allocated by torch) {torch.cuda.max_memory_allocated() / 2**30:.2f} GB")


if __name__ == "__main__":
    main()
