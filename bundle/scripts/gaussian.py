"""A Gaussian of normal-tissue descriptors, and the Mahalanobis distance from it: the latent score measures a patch's
encoding this way, the domain check a slide's colour."""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def fit_gaussian(samples: torch.Tensor, shrinkage: float = 0.0, ridge: float = 0.0) -> dict:
    """Mean and precision of ``samples`` (n x d, float64), with ``num_samples``.

    The covariance is shrunk by ``shrinkage`` towards the identity scaled to its mean variance, and ``ridge`` is
    added to its diagonal, so that it stays invertible with fewer samples than dimensions.
    """
    mean = samples.mean(0)
    dims = samples.shape[1]
    covariance = torch.cov(samples.T) if len(samples) > 1 else torch.zeros(dims, dims, dtype=samples.dtype)
    identity = torch.eye(dims, dtype=samples.dtype)
    if shrinkage:
        covariance = (1 - shrinkage) * covariance + shrinkage * identity * covariance.diagonal().mean().clamp(min=1e-6)
    precision = torch.linalg.inv(covariance + ridge * identity)
    return {"mean": mean, "precision": precision, "num_samples": len(samples)}


def mahalanobis(samples: Array, mean: Array, precision: Array) -> Array:
    """The distance of each row of ``samples`` from the Gaussian of ``mean`` and ``precision``, in its standard
    deviations; numpy arrays or tensors, computed by their own library (the scores on the model's device, the colour
    distance in float64 on the CPU)."""
    delta = samples - mean
    if isinstance(delta, np.ndarray):
        return np.sqrt(np.clip(np.einsum("bi,ij,bj->b", delta, precision, delta), 0, None))
    return torch.einsum("bi,ij,bj->b", delta, precision, delta).clamp(min=0).sqrt()
