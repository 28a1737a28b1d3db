"""Training batches are prepared on the batch, next to the model: the same numbers as the per-patch reference."""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import hed2rgb, rgb2hed

from scripts.transforms import ChannelStats, PrepareTrainingBatch, hed_jitter


def he_patches(n: int, seed: int = 0) -> torch.Tensor:
    """n×3×16×16 float64 RGB in [0, 1] made of positive haematoxylin and eosin, no DAB: H&E-like colours."""
    hed = np.random.default_rng(seed).uniform(0, 0.08, (n, 16, 16, 3)) * [1.0, 1.0, 0.0]
    return torch.from_numpy(np.moveaxis(hed2rgb(hed), -1, 1))


def as_uint8(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb * 255).round().to(torch.uint8)


def test_batched_hed_jitter_equals_scikit_image_per_patch():
    rgb = he_patches(4)
    rng = np.random.default_rng(1)
    alpha, beta = rng.uniform(0.9, 1.1, (4, 3)), rng.uniform(-0.1, 0.1, (4, 3))
    batched = hed_jitter(rgb, torch.from_numpy(alpha), torch.from_numpy(beta)).numpy()
    for i in range(4):
        hed = rgb2hed(np.moveaxis(rgb[i].numpy(), 0, -1))
        expected = hed2rgb(hed * alpha[i] + beta[i] * hed.mean(axis=(0, 1))).clip(0, 1)
        np.testing.assert_allclose(np.moveaxis(batched[i], 0, -1), expected, atol=1e-10)


def test_identity_jitter_leaves_the_patch_unchanged():
    rgb = he_patches(2)
    same = hed_jitter(rgb, torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(same, rgb)


def test_validation_batch_is_the_normalised_patch_twice():
    stats = ChannelStats([0.7, 0.5, 0.6], [0.2, 0.25, 0.15])
    images = as_uint8(he_patches(3))
    inputs, targets = PrepareTrainingBatch(stats)({"image": images})
    expected = (images.float() / 255 - torch.tensor(stats.mean).view(1, 3, 1, 1)) / torch.tensor(stats.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(targets, expected)
    assert torch.equal(inputs, targets)
    assert inputs.is_contiguous() and targets.is_contiguous()


def test_channels_last_batches_hold_the_same_values():
    stats = ChannelStats([0.7, 0.5, 0.6], [0.2, 0.25, 0.15])
    images = {"image": as_uint8(he_patches(3))}
    plain = PrepareTrainingBatch(stats)(images)
    for tensor, reference in zip(PrepareTrainingBatch(stats, channels_last=True)(images), plain, strict=True):
        assert tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
        assert torch.equal(tensor, reference)


def test_training_batch_adds_noise_to_the_input_only_and_repeats_under_the_seed():
    stats = ChannelStats([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    prepare = PrepareTrainingBatch(stats, hed_jitter=0.05, denoise_sigma=0.03)
    images = as_uint8(he_patches(64))
    torch.manual_seed(3)
    inputs, targets = prepare({"image": images})
    noise = (inputs - targets) * 0.25  # back to [0, 1] units
    assert abs(float(noise.std()) - 0.03) < 0.002 and abs(float(noise.mean())) < 0.002
    # the target is the jittered clean patch: not the plain one, but within the jitter's reach of it
    plain = PrepareTrainingBatch(stats)({"image": images})[1]
    shift = float((targets - plain).abs().mean()) * 0.25
    assert 0.0005 < shift < 0.05, shift
    torch.manual_seed(3)
    again = prepare({"image": images})
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_batched_flips_and_turns_give_each_patch_one_of_its_eight_orientations_evenly():
    from scripts.transforms import random_flip_rotate

    torch.manual_seed(0)
    patch = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(1, 3, 4, 4)
    views = [torch.rot90(view, k, (2, 3)) for view in (patch, patch.flip(2)) for k in range(4)]
    out = random_flip_rotate(patch.expand(4000, -1, -1, -1).clone())
    counts = [int((out == view).flatten(1).all(1).sum()) for view in views]
    assert sum(counts) == 4000  # every patch is one of the 8 orientations, whole
    assert min(counts) > 400 and max(counts) < 600  # 500 each expected
    torch.manual_seed(0)
    assert torch.equal(random_flip_rotate(patch.expand(4000, -1, -1, -1).clone()), out)  # the seed decides
