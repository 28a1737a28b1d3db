import numpy as np
import pytest
import torch

from conftest import tissue_like
from scripts.stain import MacenkoFit, StainNormalized, is_degenerate


def he_like(seed: int, shape=(96, 96)) -> np.ndarray:
    """Synthetic H&E: pixels mix a haematoxylin and an eosin absorbance with random concentrations."""
    rng = np.random.default_rng(seed)
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    c = rng.gamma(2.0, 0.4, size=(2, shape[0] * shape[1]))
    rgb = 240 * np.exp(-he @ c)
    return rgb.T.reshape(*shape, 3).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["slide", "per_patch"])
@pytest.mark.parametrize("value", [255, 0, 128])
def test_white_black_and_flat_patches_fall_back_without_raising(mode, value):
    transform = StainNormalized("image", mode=mode)
    transform.fit_slide([he_like(0)])
    patch = torch.full((3, 96, 96), value, dtype=torch.uint8)
    out = transform({"image": patch})
    assert out["stain_fallback"] == 1
    assert out["image"].shape == patch.shape and out["image"].dtype == patch.dtype


def test_tiny_patch_does_not_raise():
    transform = StainNormalized("image")
    out = transform({"image": torch.full((3, 1, 1), 200, dtype=torch.uint8)})
    assert out["stain_fallback"] == 1


def test_failed_slide_fit_uses_reinhard_for_every_patch():
    transform = StainNormalized("image")
    assert transform.fit_slide([np.full((96, 96, 3), 250, np.uint8)], "white.tif") is None
    out = transform({"image": torch.from_numpy(np.moveaxis(he_like(1), -1, 0).copy())})
    assert out["stain_fallback"] == 1


def test_slide_fit_maps_patches_onto_the_reference_stains():
    patches = [he_like(k) for k in range(8)]
    fit = MacenkoFit.from_patches(patches)
    assert fit.he.shape == (3, 2) and (fit.max_c > 0).all()
    transform = StainNormalized("image")
    transform.fit_slide(patches)
    out = transform({"image": torch.from_numpy(np.moveaxis(patches[0], -1, 0).copy())})
    assert out["stain_fallback"] == 0
    # the same tissue with a global stain shift normalises to (almost) the same patch
    shifted = (patches[0].astype(float) * np.array([0.9, 1.0, 1.05])).clip(0, 255).astype(np.uint8)
    transform.fit_slide([(p.astype(float) * np.array([0.9, 1.0, 1.05])).clip(0, 255).astype(np.uint8) for p in patches])
    out_shifted = transform({"image": torch.from_numpy(np.moveaxis(shifted, -1, 0).copy())})
    difference = np.abs(out["image"].numpy().astype(int) - out_shifted["image"].numpy().astype(int)).mean()
    raw_difference = np.abs(patches[0].astype(int) - shifted.astype(int)).mean()
    assert difference < raw_difference / 2


def test_metadata_and_type_are_preserved():
    from monai.data import MetaTensor

    transform = StainNormalized("image")
    transform.fit_slide([he_like(2)])
    image = MetaTensor(torch.from_numpy(np.moveaxis(he_like(3), -1, 0).copy()), meta={"location": [1, 2]})
    out = transform({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.meta["location"] == [1, 2]


def test_degenerate_detection():
    assert is_degenerate(np.full((96, 96, 3), 245, np.uint8))
    assert not is_degenerate(tissue_like(np.random.default_rng(0), (96, 96)))
    with pytest.raises(ValueError, match="stain_mode"):
        StainNormalized("image", mode="vahadane")
