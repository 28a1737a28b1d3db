"""The model's files: ``model.pt``, a plain ``state_dict`` of ``network_def``, and ``normal_stats.pt`` beside it.

MONAI's bundle API and the Model Zoo's checks (``ckpt_export``, ``monai.bundle.load``) load ``model.pt`` straight into
``network_def``. What the anomaly scores need besides the weights (the channel normalisation of the training patches
and the Gaussian of their latent means) lives in ``normal_stats.pt``, which records the digest of the weights it was
fitted with: statistics from another training run would score every patch against the wrong normal tissue, so a
mismatch is an error, never a silent default.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path

STATS_NAME = "normal_stats.pt"


def stats_path(ckpt_path: str | Path) -> Path:
    """``normal_stats.pt`` in the folder of ``ckpt_path``: training writes both files into ``ckpt_dir``."""
    return Path(ckpt_path).with_name(STATS_NAME)


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-1 of a network's weights (values in key order), whatever file or memory layout holds them."""
    digest = hashlib.sha1()
    for tensor in state_dict.values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint_file(path: str | Path, what: str) -> Any:
    """``torch.load`` of a model file with its tensors only (never arbitrary objects), a one-line error naming ``what``
    for a folder, a missing or empty file, and anything that is no PyTorch checkpoint (torch's own message advises
    ``weights_only=False``, which would run whatever code the file holds)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give the model.pt file in it.")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; train first or pass --ckpt_path.")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); copy it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle, zip and torch errors alike: the file is not a checkpoint)
        raise ValueError(
            f"{what} {path} is not a PyTorch checkpoint of tensors (loading it raised {type(error).__name__}); pass "
            "the model.pt that training writes."
        ) from None


def read_weights(ckpt_path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in ``ckpt_path``; a resume checkpoint (``last.pt``) or a bad file is a one-line error."""
    path = Path(ckpt_path)
    weights = load_checkpoint_file(path, "ckpt_path")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        held = ", ".join(sorted(weights)[:4]) if isinstance(weights, dict) else type(weights).__name__
        raise ValueError(
            f"ckpt_path {path} is not a plain state_dict of network_def (it holds {held}); pass the model.pt that "
            "training writes, not its resume checkpoint last.pt."
        )
    return weights


@functools.lru_cache(maxsize=4)
def checkpoint_digest(ckpt_path: str | Path) -> str:
    """``weights_digest`` of ``ckpt_path`` (read once per process: the calibrated knobs, the statistics and the
    metrics record each ask for it)."""
    return weights_digest(read_weights(ckpt_path))


def save_normal_stats(
    ckpt_path: str | Path,
    network: torch.nn.Module,
    norm_stats: dict[str, Any],
    latent_stats: dict[str, Any],
    colour_stats: dict[str, Any] | None = None,
    tiling: dict[str, float | int] | None = None,
) -> Path:
    """Write ``normal_stats.pt`` beside ``ckpt_path`` for the weights in it, with the widths that rebuild
    ``network`` (for the error message when someone loads it into another shape) and the ``tiling`` (resolution and
    patch size) it was trained with, which inference then holds to."""
    content = {
        "weights": weights_digest(read_weights(ckpt_path)),
        "network": {"channels": list(network.channels), "latent_channels": int(network.latent_channels)},
        "norm_stats": norm_stats,
        "latent_stats": latent_stats,
        **({"colour_stats": colour_stats} if colour_stats is not None else {}),
        **({"tiling": tiling} if tiling is not None else {}),
    }
    path = stats_path(ckpt_path)
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return path


@functools.lru_cache(maxsize=4)
def read_normal_stats(ckpt_path: str | Path) -> dict[str, Any]:
    """The statistics beside ``ckpt_path``, checked to belong to its weights (cached: treat as read-only)."""
    digest = checkpoint_digest(ckpt_path)  # the weights first: a bad ckpt_path is named as such
    path = stats_path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found beside ckpt_path {ckpt_path}: the scores need the normal-tissue statistics that "
            "training writes there when it completes (resume an interrupted run with --resume True)."
        )
    content = load_checkpoint_file(path, "normal statistics")
    if not isinstance(content, dict) or not {"weights", "norm_stats"} <= set(content):
        raise ValueError(f"{path} is not a normal_stats.pt written by this bundle's training (no weights/norm_stats).")
    if content["weights"] != digest:
        raise ValueError(
            f"{path} was fitted for other weights than {ckpt_path} (weights digest {content['weights'][:12]}… vs "
            f"{digest[:12]}…); keep each model.pt with the normal_stats.pt its training wrote."
        )
    return content


def load_network(network: torch.nn.Module, ckpt_path: str | Path, device: torch.device | str) -> torch.nn.Module:
    """Load ``model.pt`` into ``network_def``, saying which widths it was trained with when they do not fit."""
    try:
        network.load_state_dict(read_weights(ckpt_path))
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        trained = stats_path(ckpt_path)
        widths = torch.load(trained, weights_only=True).get("network") if trained.is_file() else None
        hint = (
            f"it was trained with --channels {widths['channels']} --latent_channels {widths['latent_channels']}"
            if widths
            else "set --channels / --latent_channels to the values it was trained with"
        )
        raise ValueError(f"{ckpt_path} does not match network_def ({hint}): {first}") from None
    return network.to(device).eval()
