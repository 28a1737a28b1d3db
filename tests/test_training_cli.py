"""The real CLI: `python -m monai.bundle run training` on a tiles fixture, then resume, then determinism."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BUNDLE, REPO, TINY_NET
from scripts.model_files import read_normal_stats
from scripts.scores import SCORE_QUANTILES

TRAIN_CONFIG = BUNDLE / "configs" / "train.json"


def run_training(tiles_dir, ckpt_dir, output_dir, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    args = {
        "data_source": "tiles",
        "dataset_dir": str(tiles_dir),
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(output_dir),
        "batch_size": "32",
        "num_workers": "1",
        "stats_samples": "64",
        "channels": json.dumps(TINY_NET["channels"]),
        "latent_channels": str(TINY_NET["latent_channels"]),
        "device": "cpu",  # a string, as users type it
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_CONFIG)]
    for key, value in args.items():
        command += [f"--{key}", value]
    command += list(extra)
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tiles_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    result = run_training(tiles_dir, root / "models", root / "runs", "--max_epochs", "2")
    return root, result


def test_checkpoint_loads_into_network_def(trained):
    root, _ = trained
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    parser.update(TINY_NET)
    net = parser.get_parsed_content("network_def")
    model = root / "models" / "model.pt"
    net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))  # a plain state_dict; strict
    stats = read_normal_stats(model)  # beside it, recorded for exactly these weights
    assert stats["network"] == TINY_NET
    assert len(stats["norm_stats"]["mean"]) == 3
    assert all(s > 0 for s in stats["norm_stats"]["std"])
    latent = stats["latent_stats"]  # for the Mahalanobis `latent` score, fitted on normal training patches
    dim = TINY_NET["latent_channels"] * 9
    assert latent["mean"].shape == (dim,) and latent["precision"].shape == (dim, dim)
    assert torch.linalg.eigvalsh(latent["precision"].double()).min() > 0
    quantiles = latent["score_quantiles"]  # the training normals' own scores: the decision's second scale
    assert quantiles.shape == (SCORE_QUANTILES,) and bool((quantiles.diff() >= 0).all()) and quantiles[0] > 0
    colour = stats["colour_stats"]  # for the out-of-domain check
    assert colour["mean"].shape == (3,) and torch.linalg.eigvalsh(colour["precision"].double()).min() > 0
    assert stats["tiling"] == {"target_mpp": 0.972, "patch_size": 96}  # what inference holds this model to


def test_write_normal_stats_refits_the_statistics_of_a_trained_model(trained, tiles_dir, tmp_path):
    """The workflow that gives a model trained before 0.12.0 its colour and score statistics, without training."""
    root, _ = trained
    shutil.copy(root / "models" / "model.pt", tmp_path / "model.pt")  # without the statistics training wrote
    command = [sys.executable, "-m", "monai.bundle", "run", "write_normal_stats", "--config_file", str(TRAIN_CONFIG),
               "--data_source", "tiles", "--dataset_dir", str(tiles_dir), "--ckpt_dir", str(tmp_path),
               "--batch_size", "32", "--num_workers", "1", "--stats_samples", "64", "--channels",
               json.dumps(TINY_NET["channels"]), "--latent_channels", str(TINY_NET["latent_channels"])]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    refitted, original = read_normal_stats(tmp_path / "model.pt"), read_normal_stats(root / "models" / "model.pt")
    torch.testing.assert_close(refitted["colour_stats"]["mean"], original["colour_stats"]["mean"])
    torch.testing.assert_close(refitted["latent_stats"]["score_quantiles"], original["latent_stats"]["score_quantiles"],
                               rtol=1e-3, atol=1e-3)  # fmt: skip


def test_epoch_metrics_and_grid_reach_tensorboard_and_console(trained):
    root, result = trained
    scalars, images = set(), set()
    for event_file in (root / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    assert {"val_loss", "val_kl", "val_recon", "train_loss", "train_kl", "train_recon", "beta", "capacity"} <= scalars
    assert "val/input_vs_recon" in images
    console = result.stdout + result.stderr
    assert "val_kl" in console and "capacity: 6.0000" in console  # C = 120 nats * (2 - 1) / 20 in epoch 2


def epoch_values(runs_dir, tag: str) -> list[float]:
    values = []
    for event_file in runs_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [event.value for event in acc.Scalars(tag)]
    return values


def test_tracked_capacity_run_selects_model_by_reconstruction(tiles_dir, tmp_path):
    # with |KL - C| the val_loss moves with the C schedule; select_metric makes model.pt the best val_recon instead
    options = [
        "--track_capacity",
        "True",
        "--select_metric",
        "val_recon",
        "--capacity_max",
        "60",
        "--capacity_epochs",
        "3",
    ]
    run_training(tiles_dir, tmp_path / "models", tmp_path / "runs", "--max_epochs", "3", *options)
    best = torch.load(tmp_path / "models" / "last.pt", map_location="cpu", weights_only=False)["best_checkpointer"]
    val_recon = epoch_values(tmp_path / "runs", "val_recon")
    assert len(val_recon) == 3 and best["best"] == pytest.approx(min(val_recon))


def test_resume_continues_from_the_last_epoch(trained, tiles_dir):
    root, _ = trained
    before = torch.load(root / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert before["trainer"]["iteration"] == 2 * before["trainer"]["epoch_length"]
    result = run_training(tiles_dir, root / "models", root / "runs", "--max_epochs", "3", "--resume", "True")
    console = result.stdout + result.stderr
    assert "resumed from" in console and "at epoch 2" in console
    assert "capacity: 12.0000" in console  # the schedule picks up at epoch 3, not at epoch 1
    after = torch.load(root / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert after["trainer"]["iteration"] == 3 * after["trainer"]["epoch_length"]
    assert after["best_checkpointer"]["best"] <= before["best_checkpointer"]["best"]
    # an uninterrupted 3-epoch run with the same seed ends with the very same weights
    run_training(tiles_dir, root / "straight", root / "runs_straight", "--max_epochs", "3")
    straight = torch.load(root / "straight" / "last.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(straight["model"][k], after["model"][k]) for k in after["model"])


def test_same_seed_gives_identical_weights_on_cpu(tiles_dir, tmp_path):
    weights = []
    for run in ("a", "b"):
        run_training(tiles_dir, tmp_path / run, tmp_path / f"runs_{run}", "--max_epochs", "1")
        weights.append(torch.load(tmp_path / run / "model.pt", map_location="cpu", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_training_mixes_a_folder_of_normal_patches_into_the_tiles(tiles_dir, normals_dir, tmp_path):
    result = run_training(
        tiles_dir, tmp_path / "models", tmp_path / "runs", "--max_epochs", "1", "--normals_dir", str(normals_dir)
    )
    assert f"normals_dir {normals_dir}: 16 patches (4 held out of training)" in result.stdout + result.stderr
    assert (tmp_path / "models" / "model.pt").is_file()
