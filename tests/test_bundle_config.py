"""The bundle as Model Zoo tooling sees it: properties, `verify_metadata`, `verify_net_in_out`, `ckpt_export`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import BUNDLE
from scripts.inference import load_network
from scripts.scores import SCORES, AnomalyScoreInferer

# offline stand-in for the Model Zoo metadata schema (see its $comment)
SCHEMA = Path(__file__).parent / "data" / "meta_schema.json"


def test_training_config_has_model_zoo_properties(tiles_dir):
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        data_source="tiles",
        dataset_dir=str(tiles_dir),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_verify_net_in_out_with_recon_only():
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
         "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json",
         "--network_def#recon_only", "True", "--channels", "[8,8,16,16,16,16]", "--latent_channels", "8"],
        cwd=BUNDLE, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified with no error" in result.stdout + result.stderr


def verify_metadata(meta_file, schema_copy) -> subprocess.CompletedProcess:
    """`verify_metadata` with the schema already at ``--filepath``: MONAI skips the download and validates offline."""
    command = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta_file),
               "--filepath", str(schema_copy)]  # fmt: skip
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True)


def test_verify_metadata_passes_offline_and_catches_a_missing_key(tmp_path):
    schema = tmp_path / "meta_schema.json"
    shutil.copy(SCHEMA, schema)
    result = verify_metadata(BUNDLE / "configs" / "metadata.json", schema)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["outputs"]["pred"]["dtype"]
    (tmp_path / "broken.json").write_text(json.dumps(metadata))
    assert verify_metadata(tmp_path / "broken.json", schema).returncode != 0


def test_torchscript_export_scores_like_the_eager_network(tmp_path):
    exported = tmp_path / "model.ts"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported),
         "--ckpt_file", "models/model.pt", "--key_in_ckpt", "model", "--meta_file", "configs/metadata.json",
         "--config_file", "configs/inference.json"],
        cwd=BUNDLE, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scripted = torch.jit.load(exported)
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    checkpoint = BUNDLE / "models" / "model.pt"
    eager = load_network(parser.get_parsed_content("network_def"), checkpoint, "cpu")
    patches = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for score in SCORES:
            inferer = AnomalyScoreInferer.from_checkpoint(score, checkpoint)
            torch.testing.assert_close(inferer(patches, scripted), inferer(patches, eager), rtol=1e-5, atol=1e-6)
