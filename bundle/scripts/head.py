"""The supervised head, the write-up's experiment B3: a two-layer MLP on the frozen encoder's latent mean, trained on
labelled patches, whose log-odds is the ``head`` score. It is for users who have labels; the unsupervised ``latent``
score stays the default, because it needs none.

``head.pt`` holds the head's weights and its provenance: the digest of the encoder weights it was trained on (a head
is refused beside other weights, as a calibration is), its widths, and the data it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model_files import checkpoint_digest, load_checkpoint_file, weights_digest

HEAD_FILE = "head.pt"
HEAD_METRICS = ("val_pr_auc", "val_auc")  # train_head's validation metrics, higher is better


class LatentHead(nn.Module):
    """Latent mean (flattened) -> ``hidden`` units -> one logit: 92,801 parameters at the shipped widths (288 latent
    values, 320 hidden units), the write-up's "about 100k"."""

    def __init__(self, in_features: int, hidden: int = 320, dropout: float = 0.2) -> None:
        super().__init__()
        self.in_features, self.hidden = int(in_features), int(hidden)
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent.flatten(1).float()).squeeze(1)


class FrozenEncoderHead(nn.Module):
    """The trained VAE's encoder, frozen and kept in eval mode whatever the engine sets, under a trainable head of
    ``hidden`` units sized to its latent for ``patch_size`` patches: the network ``train_head`` trains. Its output is
    the head's logit for each patch."""

    def __init__(self, vae: nn.Module, hidden: int, dropout: float, patch_size: int) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        with torch.no_grad():
            latent = self.vae.encode(torch.zeros(1, 3, patch_size, patch_size))[0]
        self.head = LatentHead(latent.numel(), hidden, dropout)

    def train(self, mode: bool = True) -> FrozenEncoderHead:
        super().train(mode)
        self.vae.eval()  # no dropout or normalisation updates in the frozen encoder
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latent = self.vae.encode(inputs)[0]
        return self.head(latent)


class HeadProvenance:
    """What ``head.pt`` records beside the weights, as a checkpointable object: the digest of the encoder weights in
    ``ckpt_path``, the head's widths and what it was ``trained_on``. Restored on ``--resume``, it refuses a run
    whose encoder or data differ from the interrupted one's: its head and best score belong to those."""

    def __init__(self, ckpt_path: str | Path, head: LatentHead, trained_on: dict[str, Any]) -> None:
        self.record = {
            "encoder": checkpoint_digest(ckpt_path), "in_features": head.in_features, "hidden": head.hidden,
            "trained_on": trained_on,
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return dict(self.record)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        changed = sorted(key for key in self.record if state.get(key) != self.record[key])
        if changed:
            raise ValueError(
                f"the interrupted head was trained with another {' and '.join(changed)} (head_last.pt); resume with "
                "the same --ckpt_path, data and head settings, or start anew with --overwrite True."
            )


def require_head_metric(select_metric: str) -> None:
    """The head is kept by a metric that rises as it improves (``AtomicCheckpointer(higher_is_better=True)``)."""
    if select_metric not in HEAD_METRICS:
        raise ValueError(f"--select_metric for train_head must be one of {list(HEAD_METRICS)}, got {select_metric!r}.")


def head_file(head_path: str | Path | None) -> dict[str, Any]:
    """The content of a ``head.pt`` that ``train_head`` wrote, each way it can be wrong a one-line error."""
    if not head_path:
        raise ValueError("--score head needs --head_path FILE: the head.pt that run train_head wrote.")
    path = Path(head_path)
    if path.is_dir():
        raise IsADirectoryError(f"head_path {path} is a folder; give the head.pt file in it.")
    if not path.is_file():
        raise FileNotFoundError(f"head_path {path} not found: run train_head first and pass the head.pt it wrote.")
    content = load_checkpoint_file(path, "head_path")
    if not isinstance(content, dict) or not {"head", "provenance"} <= set(content):
        raise ValueError(f"head_path {path} is not a head.pt written by train_head (no head and provenance).")
    return content


def read_head(head_path: str | Path | None, ckpt_path: str | Path) -> LatentHead:
    """The head in ``head_path``, in eval mode, checked to belong to ``ckpt_path``'s encoder."""
    content = head_file(head_path)
    record = content["provenance"]
    if record.get("encoder") != checkpoint_digest(ckpt_path):
        raise ValueError(
            f"head_path {head_path} was trained on the encoder of other weights (digest "
            f"{str(record.get('encoder'))[:12]}), not {ckpt_path}; train a head for these weights (run train_head "
            f"--ckpt_path {ckpt_path})."
        )
    head = LatentHead(record["in_features"], record["hidden"])
    head.load_state_dict(content["head"])
    return head.eval()


def head_digest(head_path: str | Path) -> str:
    """What a calibration and a finished slide record of the head: its weights' digest."""
    return weights_digest(head_file(head_path)["head"])
