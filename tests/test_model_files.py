"""``model.pt`` is a plain state_dict; ``normal_stats.pt`` beside it must belong to exactly those weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from scripts.model_files import checkpoint_digest, load_network, read_normal_stats, read_weights, stats_path
from tests_helpers import tiny_net


def copy_model(tiny_checkpoint, folder):
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "model.pt")
    shutil.copy(stats_path(tiny_checkpoint), folder / "normal_stats.pt")
    return folder / "model.pt"


def test_stats_are_read_for_their_own_weights(tiny_checkpoint):
    stats = read_normal_stats(tiny_checkpoint)
    assert stats["weights"] == checkpoint_digest(tiny_checkpoint)
    assert set(stats) == {"weights", "network", "norm_stats", "latent_stats", "tiling"}


def test_stats_of_other_weights_are_refused(tiny_checkpoint, tmp_path):
    model = copy_model(tiny_checkpoint, tmp_path / "retrained")
    torch.manual_seed(1)
    torch.save(tiny_net().state_dict(), model)  # new weights, the old run's statistics still beside them
    with pytest.raises(ValueError, match=r"normal_stats.pt was fitted for other weights than .*model.pt"):
        read_normal_stats(model)


def test_missing_stats_say_where_they_come_from(tiny_checkpoint, tmp_path):
    model = copy_model(tiny_checkpoint, tmp_path / "alone")
    (tmp_path / "alone" / "normal_stats.pt").unlink()
    with pytest.raises(FileNotFoundError, match="training writes there when it completes"):
        read_normal_stats(model)


def test_a_resume_checkpoint_is_not_taken_for_the_model(tiny_checkpoint, tmp_path):
    last = tmp_path / "last.pt"
    torch.save({"model": torch.load(tiny_checkpoint, weights_only=True), "optimizer": {"step": 3}}, last)
    with pytest.raises(ValueError, match="not a plain state_dict of network_def .* not its resume checkpoint last.pt"):
        read_weights(last)
    with pytest.raises(ValueError, match="not a plain state_dict"):
        load_network(tiny_net(), last, "cpu")
