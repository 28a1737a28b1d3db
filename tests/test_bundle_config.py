"""The bundle as Model Zoo tooling sees it: required properties and `verify_net_in_out`."""

from __future__ import annotations

import subprocess
import sys

from monai.bundle import ConfigWorkflow

from conftest import BUNDLE


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
         "--network_def#recon_only", "true", "--channels", "[8,8,16,16,16,16]", "--latent_channels", "8"],
        cwd=BUNDLE, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified with no error" in result.stdout + result.stderr
