"""Inference options for the shipped model on the CPU or a GPU: speed and agreement with fp32 eager scores.

    python bench/inference_options.py [--device cpu|cuda] [--tiles_dir ../shared/data/camelyon16_tiles]
        [--batch_size 64] [--rounds 3] [--tta 0|1]

Scores real 96-px patches (the 5 x 5 grid of every tile, or random patches without ``--tiles_dir``) with
inference.json's default score under fp32 eager in ``no_grad`` (the reference) and: ``inference_mode``, channels-last
memory format, ``torch.compile`` (of ``encode`` and ``decode``, what the inferer calls); on the CPU bf16 as
``cpu_bf16`` runs it, alone, with channels-last (the default where the CPU has bf16 units) and also compiled, and 1 vs
all threads; on a GPU fp16 autocast (what ``amp: true`` runs), also with channels-last, bf16 autocast and
``cudnn.benchmark``. A variant is adoptable when it is faster and its scores keep Pearson r >= 0.999 against the
reference.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import BUNDLE, as_batch, machine, synchronize
from detection_quality import tile_patches
from monai.bundle import ConfigParser

from scripts.scores import AnomalyScoreInferer


def patches(tiles_dir: Path | None, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if tiles_dir is None:
        return torch.randn(800, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    crops = np.concatenate(
        [tile_patches(tiles_dir, path.stem)[0] for path in sorted((tiles_dir / "images").glob("*.jpg"))]
    )
    return (as_batch(crops).float() / 255 - mean) / std


def autocast_inference(device: torch.device, dtype: torch.dtype) -> Callable[[], contextlib.ExitStack]:
    def context() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
        return stack

    return context


@contextlib.contextmanager
def cudnn_benchmark_inference():
    previous, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def one_thread_inference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def compiled(network: torch.nn.Module) -> torch.nn.Module:
    """The network with what the inferer calls, ``encode`` and ``decode``, compiled. ``torch.compile(network)``
    alone compiles only ``forward``, which the inferer never calls (so versions before 0.5.2 timed eager code)."""
    model = copy.copy(network)  # shares the weights and submodules
    model.encode, model.decode = torch.compile(network.encode), torch.compile(network.decode)
    return model


def run(inferer, network, x: torch.Tensor, batch_size: int, context) -> tuple[torch.Tensor, float]:
    device = next(network.parameters()).device
    with context():
        inferer(x[:batch_size], network)  # warm-up (compilation, cuDNN's algorithm search)
        synchronize(device)
        start = time.perf_counter()
        scores = torch.cat([inferer(x[i : i + batch_size], network).float() for i in range(0, len(x), batch_size)])
        synchronize(device)
    return scores.cpu(), len(x) / (time.perf_counter() - start)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    cli.add_argument("--tiles_dir", type=Path, default=None)
    cli.add_argument("--batch_size", type=int, default=64)
    cli.add_argument("--rounds", type=int, default=3, help="every variant runs once per round; medians are shown")
    cli.add_argument("--tta", type=int, choices=(0, 1), help="score in 8 orientations (default: inference.json's)")
    args = cli.parse_args()
    device = torch.device(args.device)
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    parser["device"] = f"$torch.device('{args.device}')"
    parser.update({"channels_last": False, "cpu_bf16": False})  # the reference: float32, NCHW
    if args.tta is not None:
        parser["tta"] = bool(args.tta)
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    x = patches(args.tiles_dir, inferer.mean, inferer.std).to(device)
    # on the CPU, bf16 as the bundle runs it (`cpu_bf16`: the network's layers only); on a GPU, as MONAI's engines
    # autocast the whole inferer call (`amp`)
    cpu_bf16 = AnomalyScoreInferer.from_checkpoint(
        parser["score"], parser.get_parsed_content("ckpt_path"), tta=parser["tta"], cpu_bf16=True,
        latent_ignored_variance=parser["latent_ignored_variance"],
    )  # fmt: skip
    torch.backends.cudnn.benchmark = False

    def nchw() -> tuple:
        return network, x, inferer

    def channels_last(scorer: AnomalyScoreInferer = inferer) -> tuple:
        return network.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), scorer

    # each variant prepares (network, patches, inferer) when it runs, so none leaks its memory format into the others
    variants = {
        "fp32 eager, no_grad (reference)": (nchw, torch.no_grad),
        "fp32 eager, inference_mode": (nchw, torch.inference_mode),
        "channels-last, inference_mode": (channels_last, torch.inference_mode),
    }
    if device.type == "cpu":
        variants["bf16 (cpu_bf16), inference_mode"] = (lambda: (network, x, cpu_bf16), torch.inference_mode)
        variants["bf16 + channels-last (default here)"] = (lambda: channels_last(cpu_bf16), torch.inference_mode)
    else:
        variants["fp16 autocast (amp), inference_mode"] = (nchw, autocast_inference(device, torch.half))
        variants["fp16 autocast + channels-last"] = (channels_last, autocast_inference(device, torch.half))
        variants["bf16 autocast, inference_mode"] = (nchw, autocast_inference(device, torch.bfloat16))
        variants["cudnn.benchmark, inference_mode"] = (nchw, cudnn_benchmark_inference)
    variants["torch.compile, inference_mode"] = (lambda: (compiled(network), x, inferer), torch.inference_mode)
    if device.type == "cpu":
        variants["bf16 + channels-last + torch.compile"] = (
            lambda: (compiled(channels_last()[0]), x.contiguous(memory_format=torch.channels_last), cpu_bf16),
            torch.inference_mode,
        )
    if device.type == "cpu":
        variants["1 thread, inference_mode"] = (nchw, one_thread_inference)
    # rounds of every variant in turn, medians reported: a shared machine's speed drifts within minutes, and the first
    # variant of a round would otherwise carry the process's warm-up alone
    rates: dict[str, list[float]] = {name: [] for name in variants}
    scores: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, (prepare, context) in variants.items():
            model, batch, scorer = prepare()
            scores[name], rate = run(scorer, model, batch, args.batch_size, context)
            network.to(memory_format=torch.contiguous_format)
            rates[name].append(rate)
    rows = [(name, float(np.median(rates[name])), scores[name]) for name in variants]
    reference, base = rows[0][2].double().numpy(), rows[0][1]
    print(f"machine: {machine()}")
    print(f"score {parser['score']}, tta {parser['tta']}, {len(x)} patches, batch {args.batch_size}, {device}, "
          f"median of {args.rounds} rounds")  # fmt: skip
    print(f"{'variant':<40}{'patches/s':>11}{'speed-up':>10}{'Pearson r':>11}")
    for name, rate, values in rows:
        r = np.corrcoef(reference, values.double().numpy())[0, 1]
        print(f"{name:<40}{rate:>11.1f}{rate / base:>10.2f}{r:>11.5f}")


if __name__ == "__main__":
    main()
