"""The out-of-domain check: a colour Gaussian of the training normals and a slide's median distance from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tissue_like
from scripts.domain import DomainCheck, colour_descriptors, fit_colour_stats


def test_descriptors_agree_for_arrays_and_batches():
    patches = [tissue_like(np.random.default_rng(k), (96, 96)) for k in range(3)]
    batch = torch.from_numpy(np.moveaxis(np.stack(patches), -1, 1).copy())
    np.testing.assert_allclose(colour_descriptors(batch), colour_descriptors(patches), rtol=1e-4)


def test_tissue_like_the_training_normals_is_near_and_other_tissue_far():
    rng = np.random.default_rng(0)
    normals = [tissue_like(rng, (96, 96)) for _ in range(200)]
    check = DomainCheck(fit_colour_stats(colour_descriptors(normals)), limit=8.0)
    near = check.reading(normals[:32])
    assert near.distance < 2.0 and not near.out_of_domain
    darker = [np.clip(p.astype(int) - 80, 0, 255).astype(np.uint8) for p in normals[:32]]
    assert check.reading(darker).out_of_domain


def test_a_tumour_minority_does_not_move_the_median_distance():
    rng = np.random.default_rng(1)
    normals = [tissue_like(rng, (96, 96)) for _ in range(200)]
    check = DomainCheck(fit_colour_stats(colour_descriptors(normals)))
    foreign = [np.full((96, 96, 3), (60, 20, 90), np.uint8)] * 10  # 10 of 42 patches far away
    assert check.distance(normals[:32] + foreign) < 2.0


def test_a_model_without_colour_statistics_is_not_checked():
    check = DomainCheck(None)
    reading = check.reading([np.zeros((96, 96, 3), np.uint8)])
    assert math.isnan(reading.distance) and not reading.out_of_domain


def test_too_few_normals_and_a_negative_limit_are_refused():
    with pytest.raises(ValueError, match="at least 4 normal patches"):
        fit_colour_stats(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="domain_limit"):
        DomainCheck(None, limit=-1.0)
