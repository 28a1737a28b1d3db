import numpy as np
import pytest
import torch
from skimage import io
from threadpoolctl import threadpool_limits

from conftest import requires_shared, tissue_like
from scripts.stain import (
    REFERENCE_HE,
    REFERENCE_MAX_C,
    MacenkoFit,
    StainNormalizer,
    degenerate_patches,
    optical_density,
)
from scripts.transforms import ChannelStats, PrepareSlideBatch


def he_like(seed: int, shape=(96, 96)) -> np.ndarray:
    """Synthetic H&E: pixels mix a haematoxylin and an eosin absorbance with random concentrations."""
    rng = np.random.default_rng(seed)
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    c = rng.gamma(2.0, 0.4, size=(2, shape[0] * shape[1]))
    rgb = 240 * np.exp(-he @ c)
    return rgb.T.reshape(*shape, 3).clip(0, 255).astype(np.uint8)


def batch(*patches: np.ndarray) -> torch.Tensor:
    """B x 3 x H x W uint8, as the DataLoader collates slide patches."""
    return torch.from_numpy(np.stack([np.moveaxis(p, -1, 0) for p in patches]).copy())


@pytest.mark.parametrize("mode", ["slide", "per_patch"])
@pytest.mark.parametrize("value", [255, 0, 128])
def test_white_black_and_flat_patches_fall_back_alone(mode, value):
    stain = StainNormalizer(mode=mode)
    stain = stain.for_slide(stain.slide_fit([he_like(0)]))
    images = batch(he_like(1), np.full((96, 96, 3), value, np.uint8))
    out, fallback = stain(images)
    assert fallback.tolist() == [False, True]  # the tissue patch in the same batch is still Macenko-normalised
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_tiny_patch_does_not_raise():
    _, fallback = StainNormalizer("slide")(torch.full((2, 3, 1, 1), 200, dtype=torch.uint8))
    assert fallback.all()


def test_failed_slide_fit_uses_reinhard_for_every_patch():
    stain = StainNormalizer("slide")
    fit = stain.slide_fit([np.full((96, 96, 3), 250, np.uint8)], "white.tif")
    assert fit is None
    _, fallback = stain.for_slide(fit)(batch(he_like(1), he_like(2)))
    assert fallback.all()


def test_batched_map_equals_the_float64_macenko_formula():
    patches = [he_like(k) for k in range(4)]
    fit = MacenkoFit.from_patches(patches)
    out, fallback = StainNormalizer("slide").for_slide(fit)(batch(*patches))
    od = optical_density(np.stack(patches).reshape(-1, 3))
    concentrations = np.linalg.pinv(fit.he) @ od.T * (REFERENCE_MAX_C / fit.max_c)[:, None]
    expected = (240 * np.exp(-REFERENCE_HE @ concentrations)).T.reshape(4, 96, 96, 3).round().clip(0, 255)
    assert not fallback.any()
    assert np.abs(out.permute(0, 2, 3, 1).numpy() - expected).max() <= 1  # float32 against float64


def test_slide_fit_maps_patches_onto_the_reference_stains():
    patches = [he_like(k) for k in range(8)]
    fit = MacenkoFit.from_patches(patches)
    assert fit.he.shape == (3, 2) and (fit.max_c > 0).all()
    stain = StainNormalizer("slide")
    out, _ = stain.for_slide(stain.slide_fit(patches))(batch(patches[0]))
    # the same tissue with a global stain shift normalises to (almost) the same patch
    shift = np.array([0.9, 1.0, 1.05])
    shifted = [(p.astype(float) * shift).clip(0, 255).astype(np.uint8) for p in patches]
    out_shifted, _ = stain.for_slide(stain.slide_fit(shifted))(batch(shifted[0]))
    difference = (out - out_shifted).abs().mean()
    raw_difference = np.abs(patches[0].astype(int) - shifted[0].astype(int)).mean()
    assert difference < raw_difference / 2


def test_degenerate_detection():
    white = optical_density(batch(np.full((96, 96, 3), 245, np.uint8)))
    tissue = optical_density(batch(tissue_like(np.random.default_rng(0), (96, 96))))
    assert degenerate_patches(white).tolist() == [True]
    assert degenerate_patches(tissue).tolist() == [False]
    with pytest.raises(ValueError, match="stain_mode"):
        StainNormalizer(mode="vahadane")


def test_prepare_batch_normalises_on_the_batch_and_records_fallbacks():
    from monai.data import MetaTensor

    stain = StainNormalizer("slide")
    stain = stain.for_slide(stain.slide_fit([he_like(k) for k in range(4)]))
    stats = ChannelStats(mean=(0.7, 0.5, 0.6), std=(0.2, 0.25, 0.15))
    images = batch(he_like(5), np.full((96, 96, 3), 255, np.uint8))
    batchdata = {"image": MetaTensor(images)}
    inputs, targets = PrepareSlideBatch(stain, stats)(batchdata, torch.device("cpu"))
    normalised, fallback = stain(images)
    expected = (normalised / 255 - torch.tensor(stats.mean).view(1, 3, 1, 1)) / torch.tensor(stats.std).view(1, 3, 1, 1)
    assert targets is None and type(inputs) is torch.Tensor
    torch.testing.assert_close(inputs, expected)
    assert batchdata["stain_fallback"].tolist() == fallback.tolist() == [False, True]


def largest_difference_from_per_patch_mode(patches: list[np.ndarray]) -> float:
    """Grey levels between a slide fit on each patch alone and ``per_patch`` mode (torchstain) on the same patch."""
    per_patch, slide = StainNormalizer(mode="per_patch"), StainNormalizer("slide")
    worst = 0.0
    with threadpool_limits(limits=1, user_api="blas"):  # a fit per patch: BLAS threads would fight torch's (4x slower)
        for patch in patches:
            ours, ours_fallback = slide.for_slide(slide.slide_fit([patch]))(batch(patch))
            theirs, fallback = per_patch(batch(patch))
            if not (fallback.any() or ours_fallback.any()):
                worst = max(worst, float((ours - theirs).abs().max()))
    return worst


def test_a_fit_on_one_patch_matches_torchstains_macenko():
    """Same algorithm, same stain order (haematoxylin = larger red absorbance), same float64 arithmetic and
    percentile rule as torchstain's numpy backend: the same pixels, up to rounding (torchstain truncates)."""
    assert largest_difference_from_per_patch_mode([he_like(seed) for seed in range(4)]) <= 1


def test_every_real_patch_matches_torchstains_macenko_within_one_grey_level():
    tiles = requires_shared("camelyon16_tiles", "images")
    patches = [
        image[y : y + 96, x : x + 96]
        for image in (io.imread(path)[..., :3] for path in sorted(tiles.glob("*.jpg")))
        for y in range(0, 480, 96)
        for x in range(0, 480, 96)
    ]
    assert len(patches) == 800
    assert largest_difference_from_per_patch_mode(patches) <= 1
