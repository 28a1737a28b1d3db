"""The capacity-constrained beta-VAE objective: recon + beta * max(KL - C, 0), or recon + beta * |KL - C|."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

RECON_LOSSES = ("l1", "mse")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) in nats per sample, summed over every latent element; shape (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def reconstruction_error(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``l1``) or squared (``mse``) error per sample; shape (B,)."""
    diff = (recon - target).flatten(1)
    return diff.abs().mean(dim=1) if kind == "l1" else diff.pow(2).mean(dim=1)


class BetaVAELoss(nn.Module):
    """``recon + beta * max(KL - capacity, 0)``, or ``recon + beta * |KL - capacity|``, averaged over the batch.

    ``beta`` and ``capacity`` are plain attributes so that schedule handlers can set them each epoch. By default the
    KL below ``capacity`` nats is free, which lets the latent carry information without forcing it to; a
    skip-connected decoder can still leave it nearly unused (KL far below C). ``track_capacity`` penalises the KL on
    both sides of C, as Burgess et al. (2018) do, so the latent is made to carry C nats.
    """

    def __init__(
        self, recon: str = "l1", beta: float = 1.0, capacity: float = 0.0, track_capacity: bool = False
    ) -> None:
        super().__init__()
        if recon not in RECON_LOSSES:
            raise ValueError(f"recon must be one of {RECON_LOSSES}, got {recon!r}.")
        self.recon = recon
        self.beta = beta
        self.capacity = capacity
        self.track_capacity = track_capacity

    def forward(
        self, prediction: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        recon, mu, logvar = prediction
        kl_gap = kl_divergence(mu, logvar) - self.capacity
        kl_penalty = kl_gap.abs() if self.track_capacity else torch.clamp(kl_gap, min=0.0)
        return (reconstruction_error(recon, target, self.recon) + self.beta * kl_penalty).mean()


def loss_term(term: str, kind: str = "l1") -> Callable[[tuple, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(prediction, target)`` giving the batch mean of one term (``"recon"`` or ``"kl"``).

    Wrapped in ``ignite.metrics.Loss`` (which weights each batch by its size) it logs that term's exact epoch mean.
    """
    if term not in ("recon", "kl"):
        raise ValueError(f"term must be 'recon' or 'kl', got {term!r}.")

    def batch_mean(prediction: tuple, target: torch.Tensor) -> torch.Tensor:
        recon, mu, logvar = prediction
        values = kl_divergence(mu, logvar) if term == "kl" else reconstruction_error(recon, target, kind)
        return values.mean().detach()

    return batch_mean
