"""The Model Zoo's checks in spirit, with MONAI's own functions and the arguments the zoo's CI passes them.

The zoo's CI copies a bundle to ``models/<name>/`` and runs, from there: the large-file hashes, the metadata against a
schema, ``verify_net_in_out`` and ``ckpt_export`` of ``models/model.pt`` with ``network_def`` of
``configs/inference.json`` and ``bundle_root`` pointing at the copy, the default ``run`` of that config, and the
workflow properties of ``train`` and ``infer``. Each test here does the same on a copy of ``bundle/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.apps.utils import HashCheckError
from monai.bundle import ConfigWorkflow, ckpt_export, download_large_files, load, verify_net_in_out

from conftest import BUNDLE
from scripts.model_files import load_network
from scripts.scores import SCORES, AnomalyScoreInferer

# offline stand-in for the Model Zoo metadata schema (see its $comment)
SCHEMA = Path(__file__).parent / "data" / "meta_schema.json"
NAME = "skip96_anomaly"


@pytest.fixture(scope="module")
def zoo_copy(tmp_path_factory) -> Path:
    """``bundle/`` as the zoo's CI holds it: ``models/<name>/``, without this checkout's run outputs."""
    copy = tmp_path_factory.mktemp("zoo") / "models" / NAME
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("__pycache__", "runs", "eval"))
    return copy


def zoo_kwargs(copy: Path) -> dict:
    configs = copy / "configs"
    return {"meta_file": str(configs / "metadata.json"), "config_file": str(configs / "inference.json"),
            "bundle_root": str(copy)}  # fmt: skip


def test_large_files_hashes_match_and_a_changed_copy_is_caught(zoo_copy, tmp_path):
    # found by name (MONAI 1.6.1's large_file_name argument is broken); offline, with every file present, it only
    # checks the hashes
    download_large_files(bundle_path=str(zoo_copy))
    changed = tmp_path / NAME
    shutil.copytree(zoo_copy, changed)
    with open(changed / "models" / "model.pt", "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(HashCheckError, match="model.pt"):
        download_large_files(bundle_path=str(changed))


def verify_metadata(meta_file: Path, schema_copy: Path) -> subprocess.CompletedProcess:
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


def test_verify_net_in_out_with_the_zoo_arguments(zoo_copy):
    verify_net_in_out(net_id="network_def", **zoo_kwargs(zoo_copy))  # raises on a shape or dtype mismatch


def test_ckpt_export_of_model_pt_scores_like_the_eager_network(zoo_copy):
    exported = zoo_copy / "models" / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(zoo_copy / "models" / "model.pt"),
                **zoo_kwargs(zoo_copy))  # fmt: skip
    scripted = torch.jit.load(exported)
    checkpoint = BUNDLE / "models" / "model.pt"
    eager = load_network(ConfigWorkflow(**zoo_kwargs(zoo_copy), workflow_type="infer").parser.get_parsed_content(
        "network_def"), checkpoint, "cpu")  # fmt: skip
    patches = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for score in SCORES:
            inferer = AnomalyScoreInferer.from_checkpoint(score, checkpoint)
            torch.testing.assert_close(inferer(patches, scripted), inferer(patches, eager), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workflow_type", ["train", "inference"])  # load reads configs/<workflow_type>.json
def test_monai_bundle_load_returns_the_trained_network(zoo_copy, workflow_type):
    network = load(NAME, bundle_dir=str(zoo_copy.parent), workflow_type=workflow_type, device="cpu")
    shipped = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    loaded = network.state_dict()
    assert loaded.keys() == shipped.keys()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)  # every weight, not just the ones that fit


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


def test_inference_default_run_has_model_zoo_properties_and_scores_the_demo_slide(zoo_copy, tmp_path):
    workflow = ConfigWorkflow(**zoo_kwargs(zoo_copy), workflow_type="infer", logging_file=False,
                              output_dir=str(tmp_path), num_workers=0)  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()  # the default run id, "run"
    workflow.finalize()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary[["slide", "status"]].values.tolist() == [["camelyon16_demo", "ok"]]
    assert (tmp_path / "camelyon16_demo" / "regions.geojson").is_file()


def test_default_run_from_the_command_line(zoo_copy, tmp_path):
    """``python -m monai.bundle run --config_file configs/inference.json`` from the copy, no run id."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--output_dir", str(tmp_path), "--num_workers", "0"]  # fmt: skip
    result = subprocess.run(command, cwd=zoo_copy, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(tmp_path / "summary.csv")["status"].tolist() == ["ok"]


@pytest.mark.parametrize("path", sorted(BUNDLE.rglob("*.json")), ids=lambda p: str(p.relative_to(BUNDLE)))
def test_json_is_pretty_formatted(path):
    """What the zoo's pre-commit ``pretty-format-json --autofix --no-sort-keys --indent 4`` would leave unchanged."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


@pytest.mark.parametrize("path", sorted(p for p in BUNDLE.rglob("*") if p.is_file() and p.suffix in {
    ".json", ".md", ".xml", ".yml", ".conf", ".py"}), ids=lambda p: str(p.relative_to(BUNDLE)))  # fmt: skip
def test_text_files_end_with_one_newline(path):
    text = path.read_bytes()
    assert text.endswith(b"\n") and not text.endswith(b"\n\n")
