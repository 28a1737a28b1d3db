"""Training throughput: the bundle's training workflow against the bare model step, same batch size and machine.

    python bench/train_throughput.py --dataset_dir ../shared/data/camelyon16_tiles [--batch_size 64 --iterations 20]
        [--contiguous] [--preload 0|1]
    python bench/train_throughput.py --pcam_from ../shared/data/pcam_normals [--pcam_patches 32768]

Prints one table: patches/s of (a) forward + backward + optimiser step on a batch already in memory and (b) the
ignite workflow from train.json (data loading, augmentation, metrics and every handler attached; the handlers that
run at the end of the epoch, validation and checkpoints, fall outside the timed iterations), their ratio, and the
seconds train.json takes to decode the training patches into memory (``preload``). With ``--pcam_from`` the data is
PCam's official HDF5 layout, written from the real PCam normal patches in that folder (repeated to
``--pcam_patches``), and the table ends with the seconds an epoch over PCam's 147k normal patches would take.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from common import BUNDLE, autocast, flag_overrides, machine, synchronize
from ignite.engine import Events
from monai.bundle import ConfigParser
from PIL import Image

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


PCAM_NORMALS = {"train": 131_072, "valid": 16_384}  # label-0 patches of PCam's official splits


def pcam_layout(normals_dir: Path, patches: int, out: Path) -> Path:
    """PCam's HDF5 layout (``camelyonpatch_level_2_split_{train,valid}_{x,y}.h5``, all labels 0) holding ``patches``
    training and ``patches // 8`` validation patches, the real PCam normals of ``normals_dir`` repeated."""
    images = np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted((normals_dir / "images").glob("*.jpg"))]
    )
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", patches), ("valid", max(1, patches // 8))):
        with h5py.File(out / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=images[np.arange(n) % len(images)], chunks=(1, 96, 96, 3))
        with h5py.File(out / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=np.zeros((n, 1, 1, 1), dtype=np.uint8))
    return out


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
    cli.add_argument("--dataset_dir")
    cli.add_argument("--data_source", default="tiles")
    cli.add_argument("--pcam_from", type=Path, help="a folder of PCam normal patches (images/*.jpg): PCam layout")
    cli.add_argument("--pcam_patches", type=int, default=32_768, help="training patches of the PCam layout")
    cli.add_argument("--preload", type=int, choices=(0, 1), help="hold the patches in memory (default: train.json's)")
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

    if args.pcam_from:
        args.dataset_dir = str(pcam_layout(args.pcam_from, args.pcam_patches, Path(tempfile.mkdtemp()) / "pcam"))
        args.data_source = "pcam"
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
    parser.update(flag_overrides(args, ("amp", "cudnn_benchmark", "preload")))
    torch.backends.cudnn.benchmark = parser.get_parsed_content("cudnn_benchmark")  # as the `training` workflow sets it
    torch.manual_seed(0)
    bare_iterations = max(5, args.iterations // 2)
    # the bare step before and after the workflow, the faster as the reference: this VM's speed drifts by 20 %
    bare_before = bare_step_rate(parser, args.batch_size, bare_iterations)
    start = time.perf_counter()
    patches = len(parser.get_parsed_content("train#dataset"))
    preload = time.perf_counter() - start  # decoding every training patch into memory, when preload is on
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
    print(f"preload {parser.get_parsed_content('preload')}: {patches} training patches ready in {preload:.1f} s")
    if args.pcam_from:  # train.json pools both splits' normals and validates on val_fraction of them
        trained = round(sum(PCAM_NORMALS.values()) * (1 - parser.get_parsed_content("val_fraction")))
        epoch = preload * trained / patches + trained / workflow
        print(f"an epoch over PCam's normals ({trained:,} trained on), estimate: {epoch:.0f} s, of which preload "
              f"{preload * trained / patches:.0f} s once")  # fmt: skip


if __name__ == "__main__":
    main()
