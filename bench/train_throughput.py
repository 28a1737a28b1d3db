"""Training throughput: the bundle's training workflow against the bare model step, same batch size and machine.

    python bench/train_throughput.py --dataset_dir ../shared/data/camelyon16_tiles [--batch_size 64 --iterations 20]
        [--contiguous]

Prints one table: patches/s of (a) forward + backward + optimiser step on a batch already in memory and (b) the
ignite workflow from train.json (data loading, augmentation, metrics and every handler attached; the handlers that
run at the end of the epoch, validation and checkpoints, fall outside the timed iterations), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
from common import BUNDLE, autocast, flag_overrides, machine, synchronize
from ignite.engine import Events
from monai.bundle import ConfigParser

from scripts.network import CHANNELS, LATENT_CHANNELS


def bare_step_rate(parser: ConfigParser, batch_size: int, iterations: int) -> float:
    """Forward, backward and AdamW on a batch in memory, as MONAI's trainer runs them (``amp``: fp16 autocast and a
    gradient scaler on CUDA)."""
    network = parser.get_parsed_content("network")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    device = parser.get_parsed_content("device")
    amp = parser.get_parsed_content("amp") and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    # the memory format the workflow's prepare_batch hands the network, so that both sides run the same kernels
    memory_format = torch.channels_last if parser["channels_last"] else torch.contiguous_format
    x = torch.randn(batch_size, 3, 96, 96, device=device).contiguous(memory_format=memory_format)
    network.train()
    for i in range(iterations + 2):  # two warm-up steps
        if i == 2:
            synchronize(device)
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            value = loss(network(x + 0.03 * torch.randn_like(x)), x)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    return iterations * batch_size / (time.perf_counter() - start)


def workflow_rate(parser: ConfigParser, iterations: int) -> tuple[float, int]:
    trainer = parser.get_parsed_content("train#trainer")
    parser.get_parsed_content("validate#handlers#0").set_trainer(trainer=trainer)  # early stopping, as `training` does
    trainer.state.epoch_length = iterations
    trainer.state.max_epochs = 1
    times = []
    device = parser.get_parsed_content("device")
    # on a GPU each timestamp waits for the iteration's kernels: a sync per step, if anything against the workflow
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: (synchronize(device), times.append(time.perf_counter()))
    )
    trainer.run()
    # the first two iterations include worker start-up; count from the end of the second
    steady = times[2:]
    return (len(steady) - 1) * parser["batch_size"] / (steady[-1] - steady[0]), len(times)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--dataset_dir", required=True)
    cli.add_argument("--data_source", default="tiles")
    cli.add_argument("--batch_size", type=int, default=64)
    cli.add_argument("--num_workers", type=int, default=2)
    cli.add_argument("--iterations", type=int, default=20)
    cli.add_argument("--channels", default=json.dumps(CHANNELS), help="default: the shipped widths")
    cli.add_argument("--latent_channels", type=int, default=LATENT_CHANNELS)
    cli.add_argument("--contiguous", action="store_true", help="channels_last false: batches in NCHW order")
    cli.add_argument("--amp", type=int, choices=(0, 1), help="fp16 autocast on CUDA (default: train.json's)")
    cli.add_argument("--cudnn_benchmark", type=int, choices=(0, 1), help="default: train.json's")
    args = cli.parse_args()
    logging.basicConfig(level=logging.WARNING)

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    parser.update(
        {
            "dataset_dir": args.dataset_dir,
            "data_source": args.data_source,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "channels": json.loads(args.channels),
            "latent_channels": args.latent_channels,
            "stats_samples": 256,
            "ckpt_dir": "/tmp/skip96_bench/models",
            "output_dir": "/tmp/skip96_bench/runs",
            "latent_stats_samples": 64,
            "channels_last": not args.contiguous,
        }
    )
    parser.update(flag_overrides(args, ("amp", "cudnn_benchmark")))
    torch.backends.cudnn.benchmark = parser.get_parsed_content("cudnn_benchmark")  # as the `training` workflow sets it
    torch.manual_seed(0)
    bare_iterations = max(5, args.iterations // 2)
    # the bare step before and after the workflow, the faster as the reference: this VM's speed drifts by 20 %
    bare_before = bare_step_rate(parser, args.batch_size, bare_iterations)
    workflow, _ = workflow_rate(parser, args.iterations + 2)
    bare = max(bare_before, bare_step_rate(parser, args.batch_size, bare_iterations))
    print(f"machine: {machine()}")
    layout = "NCHW" if args.contiguous else "channels-last"
    flags = f"amp {parser.get_parsed_content('amp')}, cudnn_benchmark {parser.get_parsed_content('cudnn_benchmark')}"
    print(f"network channels {args.channels}, latent {args.latent_channels}x3x3, batch {args.batch_size}, {layout}")
    print(flags)
    print(f"{'measure':<44}{'patches/s':>12}")
    print(f"{'ratio workflow / bare step':<44}{workflow / bare:>12.2f}")
    print(f"{'bare step (forward+backward+AdamW, in memory)':<44}{bare:>12.1f}")
    print(f"{'training workflow (train.json, ' + str(args.num_workers) + ' workers)':<44}{workflow:>12.1f}")


if __name__ == "__main__":
    main()
