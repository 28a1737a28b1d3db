"""`multi_gpu_train.json` layered over `train.json`, run by torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE, REPO, TINY_NET
from scripts.model_files import read_normal_stats


def test_ddp_training_with_two_processes(tiles_dir, tmp_path):
    # test-only layer: every rank saves its final weights, so the test can see that the ranks stayed in sync
    probe = tmp_path / "probe.json"
    probe.write_text(
        json.dumps(
            {
                "finalize": [
                    "$torch.save(@network_def.state_dict(), os.path.join(@ckpt_dir, f'rank{dist.get_rank()}.pt'))",
                    "$dist.destroy_process_group()",
                ]
            }
        )
    )
    configs = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "multi_gpu_train.json"), str(probe)]
    ckpt_dir, runs = tmp_path / "models", tmp_path / "runs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(configs),
        "--data_source", "tiles", "--dataset_dir", str(tiles_dir), "--ckpt_dir", str(ckpt_dir),
        "--output_dir", str(runs), "--max_epochs", "2", "--batch_size", "16", "--num_workers", "0",
        "--stats_samples", "64", "--channels", json.dumps(TINY_NET["channels"]),
        "--latent_channels", str(TINY_NET["latent_channels"]), "--device", "cpu",  # a string, as users type it
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [torch.load(ckpt_dir / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    last = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=False)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    best = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=True)
    # checkpoints hold the unwrapped network (no "module." prefix). DDP kept the ranks in step: rank 1 ends with the
    # weights of last.pt; rank 0 ends with those of model.pt, which it loaded to fit the latent statistics.
    assert last["model"].keys() == best.keys() == ranks[0].keys()
    assert all(torch.equal(last["model"][k], ranks[1][k]) for k in ranks[1])
    assert all(torch.equal(best[k], ranks[0][k]) for k in ranks[0])
    assert "latent_stats" in read_normal_stats(ckpt_dir / "model.pt")
    # each rank saw half of every epoch; only rank 0 logged and wrote TensorBoard events
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    parser.update({"data_source": "tiles", "dataset_dir": str(tiles_dir)})
    crops = len(parser.get_parsed_content("normal_splits").train)
    assert last["trainer"]["epoch_length"] == math.ceil(crops / 2) // 16
    writers = {event_file.name.split(".")[-2] for event_file in runs.glob("events.out.tfevents.*")}  # process ids
    assert len(writers) == 1
    console = result.stdout + result.stderr
    assert console.count("Epoch[2] Metrics -- val_kl") == 1 and console.count("Got new best metric of val_loss") == 1
