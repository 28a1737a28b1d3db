"""The supervised head (``train_head``, ``--score head``): trained on labelled PCam files, tiles and class folders on
the frozen shipped encoder, resumed, used for inference end to end, and refused with one line where its input is
wrong."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from skimage import io

from conftest import BUNDLE, REPO, requires_shared, tissue_like, write_slide
from scripts.head import HEAD_FILE, FrozenEncoderHead, head_digest, read_head
from scripts.labelled_data import ClassFolders, crop_labels, labelled_splits, positive_weight
from scripts.model_files import checkpoint_digest
from scripts.regions import to_asap_xml

SHIPPED = BUNDLE / "models" / "model.pt"
TRAIN_HEAD = str([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "train_head.json")])
INFERENCE = str(BUNDLE / "configs" / "inference.json")
EVALUATE = str([INFERENCE, str(BUNDLE / "configs" / "evaluate.json")])


def bundle_run(workflow: str, config: str, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config, *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ})
    assert (result.returncode == 0) is ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def last_error_line(result: subprocess.CompletedProcess) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("ERROR")][-1]


@pytest.fixture(scope="module")
def trained_head(pcam_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``run train_head`` as documented, on the PCam-layout fixture with its labels (every third patch tumour)."""
    ckpt_dir = tmp_path_factory.mktemp("head")
    result = bundle_run("train_head", TRAIN_HEAD, "--dataset_dir", str(pcam_dir), "--ckpt_dir", str(ckpt_dir),
                        "--max_epochs", "2")  # fmt: skip
    return ckpt_dir, result


def test_train_head_on_pcam_files_keeps_the_best_head_with_its_provenance(trained_head):
    ckpt_dir, result = trained_head
    content = torch.load(ckpt_dir / HEAD_FILE, weights_only=True)
    record = content["provenance"]
    assert record["encoder"] == checkpoint_digest(SHIPPED)
    assert record["trained_on"]["data_source"] == "pcam" and record["trained_on"]["class_balance"] == "pos_weight"
    head = read_head(ckpt_dir / HEAD_FILE, SHIPPED)
    assert 50_000 < sum(p.numel() for p in head.parameters()) < 150_000  # the write-up's ~100k
    log = result.stdout + result.stderr
    assert re.search(r"training patches: 10 tumour, 20 normal", log) and "validation patches: 4 tumour, 8 normal" in log
    assert re.search(r"val_pr_auc: [\d.]+", log) and re.search(r"val_auc: [\d.]+", log)
    assert (ckpt_dir / "head_last.pt").is_file()


def test_train_head_resumes_and_refuses_to_overwrite(trained_head, pcam_dir):
    ckpt_dir, _ = trained_head
    refused = bundle_run("train_head", TRAIN_HEAD, "--dataset_dir", str(pcam_dir), "--ckpt_dir", str(ckpt_dir),
                         ok=False)  # fmt: skip
    assert "already holds head.pt and head_last.pt" in last_error_line(refused)
    resumed = bundle_run("train_head", TRAIN_HEAD, "--dataset_dir", str(pcam_dir), "--ckpt_dir", str(ckpt_dir),
                         "--max_epochs", "3", "--resume", "True")  # fmt: skip
    epochs = re.findall(r"Epoch\[(\d+)\] Metrics", resumed.stdout + resumed.stderr)
    assert epochs and set(epochs) == {"3"}  # epochs 1 and 2 are not trained again


def test_the_config_trains_the_head_alone_on_a_frozen_encoder(pcam_dir):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "train_head.json"])
    parser["dataset_dir"] = str(pcam_dir)
    network, optimiser = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    assert isinstance(network, FrozenEncoderHead)
    trained = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert trained == {id(p) for p in network.head.parameters()}
    network.train()  # as the trainer sets it each epoch: the encoder stays in eval mode
    assert network.head.training and not network.vae.training
    assert not any(p.requires_grad for p in network.vae.parameters())
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.nn.functional.binary_cross_entropy_with_logits(network(torch.rand(8, 3, 96, 96)), torch.ones(8)).backward()
    optimiser.step()
    changed = {k for k, v in network.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("head.") for k in changed)


def test_the_best_head_is_the_one_of_highest_validation_pr_auc(tmp_path):
    from types import SimpleNamespace

    from scripts.checkpoints import AtomicCheckpointer

    head = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointer(str(tmp_path), {"head": head}, "head.pt", "val_pr_auc", higher_is_better=True)
    for epoch, pr_auc in enumerate((0.5, 0.7, 0.6), 1):
        torch.nn.init.constant_(head.weight, epoch)
        saver(SimpleNamespace(state=SimpleNamespace(metrics={"val_pr_auc": pr_auc})))
    assert torch.load(tmp_path / "head.pt", weights_only=True)["weight"].eq(2).all()  # epoch 2's, at 0.7
    assert saver.best == -0.7


def test_train_head_on_the_shared_tiles(tmp_path):
    tiles = requires_shared("camelyon16_tiles")
    ckpt_dir = tmp_path / "head"
    result = bundle_run("train_head", TRAIN_HEAD, "--data_source", "tiles", "--dataset_dir", str(tiles),
                        "--ckpt_dir", str(ckpt_dir), "--max_epochs", "1")  # fmt: skip
    assert (ckpt_dir / HEAD_FILE).is_file()
    assert re.search(r"training patches: \d+ tumour, \d+ normal", result.stdout + result.stderr)


def test_tile_crops_are_labelled_by_evaluations_centre_rule():
    tumour = np.zeros((192, 192), bool)
    tumour[100:110, 0:192] = True  # a band: 10 of 96 rows, in the centre third of the crop at y 64 only
    corners = np.array([[0, 0], [64, 0], [96, 96]])
    assert list(crop_labels(tumour, corners, 96, "centre", 0.5)) == [0, 1, 0]
    assert list(crop_labels(tumour, corners, 96, "fraction", 0.1)) == [0, 1, 1]
    assert list(crop_labels(tumour, corners, 96, "fraction", 0.2)) == [0, 0, 0]


def test_class_folders_split_by_class_and_balance_the_loss(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("normal", 30), ("tumour", 10)):
        (tmp_path / name).mkdir()
        for k in range(n):
            io.imsave(tmp_path / name / f"{k}.png", tissue_like(rng, (96, 96)), check_contrast=False)
    splits = labelled_splits("folders", tmp_path, val_fraction=0.2)
    assert len(splits.train) == 32 and len(splits.val) == 8  # 20 % of each class
    assert positive_weight(splits.train, "pos_weight").item() == pytest.approx(24 / 8)
    assert positive_weight(splits.train, "none") is None
    assert splits.train[0]["image"].shape == (3, 96, 96)


def bad_head(tmp_path: Path, trained: Path) -> Path:
    content = torch.load(trained, weights_only=True)
    content["provenance"]["encoder"] = "0" * 40
    torch.save(content, tmp_path / "other_head.pt")
    return tmp_path / "other_head.pt"


def test_bad_labelled_input_gets_one_line_each(tmp_path, pcam_dir, trained_head):
    x = tmp_path / "pcam"
    x.mkdir()
    (x / "camelyonpatch_level_2_split_train_x.h5").symlink_to(pcam_dir / "camelyonpatch_level_2_split_train_x.h5")
    with pytest.raises(FileNotFoundError, match=r"camelyonpatch_level_2_split_train_y\.h5 not found beside") as error:
        labelled_splits("pcam", x)
    messages = [str(error.value)]
    with h5py.File(x / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((29, 1, 1, 1), np.uint8))
    with pytest.raises(ValueError, match=r"30 patches but 29 labels in camelyonpatch_level_2_split_train_y") as error:
        labelled_splits("pcam", x)
    messages.append(str(error.value))
    (tmp_path / "folders" / "normal").mkdir(parents=True)
    io.imsave(tmp_path / "folders" / "normal" / "a.png", np.full((96, 96, 3), 200, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match=r"both classes.*tumour/: 0 images.*add the tumour/ patches") as error:
        ClassFolders(tmp_path / "folders")
    messages.append(str(error.value))
    other = bad_head(tmp_path, trained_head[0] / HEAD_FILE)
    with pytest.raises(ValueError, match=r"on the encoder of other weights \(digest 000000000000\)") as error:
        read_head(other, SHIPPED)
    messages.append(str(error.value))
    assert all("\n" not in message for message in messages)
    result = bundle_run("inference", INFERENCE, "--score", "head", "--output_dir", str(tmp_path / "out"), ok=False)
    assert "--score head needs --head_path FILE" in last_error_line(result) and "Traceback" not in result.stderr


def test_inference_with_the_head_score_end_to_end(trained_head, tmp_path):
    head = trained_head[0] / HEAD_FILE
    result = bundle_run("inference", INFERENCE, "--score", "head", "--head_path", str(head), "--output_dir",
                        str(tmp_path))  # fmt: skip
    patches = pd.read_csv(tmp_path / "camelyon16_demo" / "patches.csv")
    network = read_head(head, SHIPPED)
    assert len(patches) == 210 and patches["score"].notna().all()
    settings = json.loads((tmp_path / "camelyon16_demo" / "complete.json").read_text())["settings"]
    assert settings["score"] == "head" and settings["head"]  # the head's digest: another head rescored
    # the shipped calibration, made for the latent score, gives way to the defaults with a warning
    assert "made with other score settings (score 'latent', now 'head')" in result.stdout + result.stderr
    assert (tmp_path / "report.html").is_file() and network.hidden == 320


def test_a_calibration_records_the_head_it_was_made_for(trained_head, tmp_path):
    head = trained_head[0] / HEAD_FILE
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for suffix in (".tif", ".xml"):
        (cohort / f"camelyon16_demo{suffix}").symlink_to(BUNDLE / "sample_data" / f"camelyon16_demo{suffix}")
    write_slide(cohort / "normal.tif", 0.972, size=(1024, 1536), levels=2)
    (cohort / "normal.xml").write_text(to_asap_xml([]))
    with_head = ("--score", "head", "--head_path", str(head))
    bundle_run("calibrate", EVALUATE, "--dataset_dir", str(cohort), "--annotation_dir", str(cohort), "--output_dir",
               str(tmp_path / "cal"), *with_head)  # fmt: skip
    calibration = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert calibration["scoring"]["score"] == "head" and calibration["scoring"]["head"] == head_digest(head)
    other = tmp_path / "other.pt"  # another head for the same encoder: the calibration is not its own
    content = torch.load(head, weights_only=True)
    content["head"] = {k: v + 1 for k, v in content["head"].items()}
    torch.save(content, other)
    calibrated = ("--calibration_file", str(tmp_path / "cal" / "calibration.json"))
    refused = bundle_run("inference", INFERENCE, "--score", "head", "--head_path", str(other), *calibrated,
                         "--output_dir", str(tmp_path / "out"), ok=False)  # fmt: skip
    assert "other score settings" in refused.stdout + refused.stderr
