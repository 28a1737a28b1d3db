"""CPU inference options for the shipped model: speed and agreement with fp32 eager scores.

    python bench/cpu_inference_options.py [--tiles_dir ../shared/data/camelyon16_tiles] [--batch_size 64]

Scores real 96-px patches (the 5 x 5 grid of every tile, or random patches without ``--tiles_dir``) with
inference.json's default score under: fp32 eager in ``no_grad`` (the reference), ``inference_mode``,
channels-last memory format, bf16 autocast, ``torch.compile``, and 1 vs all threads. A variant is adoptable when it
is faster and its scores keep Pearson r >= 0.999 against the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, as_batch, machine
from detection_quality import tile_patches
from monai.bundle import ConfigParser


def patches(tiles_dir: Path | None, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if tiles_dir is None:
        return torch.randn(800, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    crops = np.concatenate(
        [tile_patches(tiles_dir, path.stem)[0] for path in sorted((tiles_dir / "images").glob("*.jpg"))]
    )
    return (as_batch(crops).float() / 255 - mean) / std


def bf16_inference() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    return stack


def run(inferer, network, x: torch.Tensor, batch_size: int, context) -> tuple[torch.Tensor, float]:
    with context():
        inferer(x[:batch_size], network)  # warm-up (and compilation)
        start = time.perf_counter()
        scores = torch.cat([inferer(x[i : i + batch_size], network).float() for i in range(0, len(x), batch_size)])
    return scores, len(x) / (time.perf_counter() - start)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--tiles_dir", type=Path, default=None)
    cli.add_argument("--batch_size", type=int, default=64)
    args = cli.parse_args()
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser["device"] = "$torch.device('cpu')"
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    x = patches(args.tiles_dir, inferer.mean, inferer.std)
    threads = torch.get_num_threads()
    # each variant prepares (network, patches) when it runs, so none leaks its memory format into the others
    variants = {
        "fp32 eager, no_grad (reference)": (lambda: (network, x), torch.no_grad),
        "fp32 eager, inference_mode": (lambda: (network, x), torch.inference_mode),
        "channels-last, inference_mode": (
            lambda: (network.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)),
            torch.inference_mode,
        ),
        "bf16 autocast, inference_mode": (lambda: (network, x), bf16_inference),
        "torch.compile, inference_mode": (lambda: (torch.compile(network), x), torch.inference_mode),
    }  # fmt: skip
    rows = []
    for name, (prepare, context) in variants.items():
        scores, rate = run(inferer, *prepare(), args.batch_size, context)
        network.to(memory_format=torch.contiguous_format)
        rows.append((name, rate, scores))
    torch.set_num_threads(1)
    scores, rate = run(inferer, network, x, args.batch_size, torch.inference_mode)
    rows.append(("1 thread, inference_mode", rate, scores))
    torch.set_num_threads(threads)
    reference, base = rows[0][2].double().numpy(), rows[0][1]
    print(f"machine: {machine()}")
    print(f"score {parser['score']}, {len(x)} patches, batch {args.batch_size}")
    print(f"{'variant':<36}{'patches/s':>11}{'speed-up':>10}{'Pearson r':>11}")
    for name, rate, scores in rows:
        r = np.corrcoef(reference, scores.double().numpy())[0, 1]
        print(f"{name:<36}{rate:>11.1f}{rate / base:>10.2f}{r:>11.5f}")


if __name__ == "__main__":
    main()
