import numpy as np
import pytest
import torch

from conftest import TINY_NET
from scripts.model_files import load_network, save_normal_stats
from scripts.scores import (
    SCORE_QUANTILES,
    SCORES,
    AnomalyScoreInferer,
    SlideRarity,
    minor_component_precision,
    normal_score_floor,
    normal_score_floors,
)
from scripts.transforms import ChannelStats
from tests_helpers import tiny_net


@pytest.mark.parametrize("score", SCORES)
def test_scores_are_finite_deterministic_and_higher_for_worse_reconstruction(score, tiny_checkpoint):
    inferer = AnomalyScoreInferer.from_checkpoint(score, tiny_checkpoint)
    net = load_network(tiny_net(), tiny_checkpoint, "cpu")
    x = torch.randn(6, 3, 96, 96) * 0.3
    with torch.no_grad():
        a, b = inferer(x, net), inferer(x, net)
    assert a.shape == (6,) and torch.isfinite(a).all() and (a >= 0).all()
    assert torch.equal(a, b)


def test_reconstruction_scores_rank_a_copy_below_noise():
    """With a network that returns its input, l1/mse/ssim are zero; noise added to the input raises them."""

    class Identity(torch.nn.Module):
        def encode(self, x):
            return torch.zeros(len(x), 1, 3, 3), None, [x]

        def decode(self, z, skips):
            return skips[0]

    x = torch.rand(4, 3, 96, 96)
    stats = {"mean": [0.0] * 3, "std": [1.0] * 3}
    for score in ("l1", "mse", "ssim", "l1_ratio"):
        inferer = AnomalyScoreInferer(score, ChannelStats(**stats))
        assert torch.allclose(inferer(x, Identity()), torch.zeros(4), atol=1e-5)
    # bottleneck_ratio decodes with the skips zeroed: this network then returns zeros, so the score is |x| over the
    # error of the 4x down-up reconstruction
    trivial = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), scale_factor=4)
    expected = x.abs().flatten(1).mean(1) / (trivial - x).abs().flatten(1).mean(1)
    bottleneck = AnomalyScoreInferer("bottleneck_ratio", ChannelStats(**stats))(x, Identity())
    assert torch.allclose(bottleneck, expected)


def test_latent_score_is_mahalanobis_distance():
    class Fixed(torch.nn.Module):
        def encode(self, x):
            return x[:, :1, :3, :3], None, []

    stats = {"mean": torch.zeros(9), "precision": torch.eye(9) * 4.0}
    x = torch.zeros(2, 3, 96, 96)
    x[1, 0, :3, :3] = 1.0
    distance = AnomalyScoreInferer("latent", ChannelStats(), stats)(x, Fixed())
    assert torch.allclose(distance, torch.tensor([0.0, 6.0]))  # sqrt(9 * 4)


def test_minor_component_precision_leaves_out_the_fewest_leading_components_holding_the_share():
    """Variances 4, 3, 2, 1 (shares 0.4, 0.3, 0.2, 0.1) in a rotated basis: ignoring 50 % takes out the first two
    components (0.4 < 0.5, 0.7 >= 0.5), ignoring 30 % the first one."""
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    precision = rotation @ torch.diag(torch.tensor([1 / 4, 1 / 3, 1 / 2, 1.0], dtype=torch.float64)) @ rotation.T
    for ignored, kept in ((0.5, [0, 0, 1 / 2, 1.0]), (0.3, [0, 1 / 3, 1 / 2, 1.0])):
        expected = rotation @ torch.diag(torch.tensor(kept, dtype=torch.float64)) @ rotation.T
        torch.testing.assert_close(minor_component_precision(precision, ignored), expected)
    assert minor_component_precision(precision, 0.0) is precision
    with pytest.raises(ValueError, match="latent_ignored_variance"):
        minor_component_precision(precision, 1.0)


def test_latent_score_over_minor_components_ignores_the_leading_direction():
    class Fixed(torch.nn.Module):
        def encode(self, x):
            return x[:, :1, :3, :3], None, []

    variances = torch.tensor([9.0] + [1.0] * 8)  # the first latent value holds 9 / 17 of the variance
    stats = {"mean": torch.zeros(9), "precision": torch.diag(1 / variances)}
    x = torch.zeros(2, 3, 96, 96)
    x[0, 0, 0, 0] = 3.0  # along the leading component: distance 1 with all components, 0 without it
    x[1, 0, 2, 2] = 1.0  # along a minor one: distance 1 either way
    full = AnomalyScoreInferer("latent", ChannelStats(), stats)(x, Fixed())
    minor = AnomalyScoreInferer("latent", ChannelStats(), stats, latent_ignored_variance=0.5)(x, Fixed())
    torch.testing.assert_close(full, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(minor, torch.tensor([0.0, 1.0]))


def test_tta_is_the_rms_over_the_8_orientations_and_does_not_depend_on_orientation():
    class Corner(torch.nn.Module):  # mu is the top-left 3x3 corner: it changes with every flip and rotation
        def encode(self, x):
            return x[:, :1, :3, :3], None, []

    stats = {"mean": torch.zeros(9), "precision": torch.eye(9)}
    plain = AnomalyScoreInferer("latent", ChannelStats(), stats)
    tta = AnomalyScoreInferer("latent", ChannelStats(), stats, tta=True)
    x = torch.randn(5, 3, 96, 96)
    views = [torch.rot90(v, k, (2, 3)) for v in (x, x.flip(3)) for k in range(4)]
    expected = torch.stack([plain(v, Corner()) for v in views]).pow(2).mean(0).sqrt()
    assert torch.allclose(tta(x, Corner()), expected)
    for turned in (torch.rot90(x, 1, (2, 3)), x.flip(2), x.flip(3).transpose(2, 3)):
        assert torch.allclose(tta(turned, Corner()), tta(x, Corner()), atol=1e-5)
        assert not torch.allclose(plain(turned, Corner()), plain(x, Corner()), atol=1e-3)


def test_unknown_score_and_missing_latent_stats_are_refused():
    with pytest.raises(ValueError, match="score must be one of"):
        AnomalyScoreInferer("psnr", ChannelStats())
    with pytest.raises(ValueError, match="latent_stats"):
        AnomalyScoreInferer("latent", ChannelStats())


def test_checkpoint_that_does_not_match_network_def_is_named(tiny_checkpoint):
    from scripts.network import Skip96VAE

    with pytest.raises(ValueError, match="does not match network_def"):
        load_network(Skip96VAE(channels=(4, 4, 4, 4, 4, 4), latent_channels=4), tiny_checkpoint, "cpu")


def test_rarity_hands_on_the_48px_feature_statistics_and_refuses_tta(tiny_checkpoint):
    net = load_network(tiny_net(), tiny_checkpoint, "cpu")
    x = torch.randn(4, 3, 96, 96) * 0.3
    with torch.no_grad():
        descriptors = AnomalyScoreInferer.from_checkpoint("rarity", tiny_checkpoint)(x, net)
        features = net.encode(x)[2][1]
    assert descriptors.shape == (4, 2 * features.shape[1])
    assert torch.allclose(descriptors, torch.cat([features.mean((2, 3)), features.std((2, 3))], 1))
    with pytest.raises(ValueError, match="tta applies to the label-free per-patch scores, not 'rarity'"):
        AnomalyScoreInferer.from_checkpoint("rarity", tiny_checkpoint, tta=True)


def test_slide_rarity_ranks_a_small_foreign_cluster_first_unless_it_may_vouch_for_itself():
    rng = np.random.default_rng(0)
    rows, cols = np.indices((12, 12))
    grid = np.stack([rows.ravel(), cols.ravel()], 1)
    descriptors = rng.normal(size=(144, 8))
    foreign = (rows.ravel() // 2 == 2) & (cols.ravel() // 2 == 3)  # a 2 x 2 cluster of cells
    descriptors[foreign] = 6.0 + 0.1 * rng.normal(size=(4, 8))  # alike each other, unlike everything else
    rarity = SlideRarity(neighbours=3, exclusion=1)(descriptors, grid, "s")
    assert set(np.argsort(rarity)[-4:]) == set(np.flatnonzero(foreign))
    # with no exclusion the cluster's 3 other cells are its 3 nearest: it looks as ordinary as any normal cell
    vouched = SlideRarity(neighbours=3, exclusion=0)(descriptors, grid, "s")
    assert vouched[foreign].max() < np.median(vouched[~foreign])
    assert rarity[foreign].min() > 3 * np.median(rarity[~foreign])


def test_slide_rarity_refuses_a_slide_too_small_for_its_exclusion():
    grid = np.stack(np.indices((3, 3)).reshape(2, -1), 1)
    with pytest.raises(ValueError, match="tiny.tif: a patch has 0 patches more than rarity_exclusion 4 cells away"):
        SlideRarity(neighbours=5, exclusion=4)(np.random.default_rng(0).normal(size=(9, 4)), grid, "tiny.tif")
    with pytest.raises(ValueError, match="--rarity_neighbours must be an integer >= 1"):
        SlideRarity(neighbours=0, exclusion=4)


def test_normal_score_floor_is_the_quantile_of_the_training_normals_scores(tmp_path):
    net = tiny_net()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    dim = TINY_NET["latent_channels"] * 9
    quantiles = torch.linspace(10.0, 20.0, SCORE_QUANTILES)  # uniform scores from 10 to 20
    stats = {"mean": torch.zeros(dim), "precision": torch.eye(dim), "num_samples": 5, "score_quantiles": quantiles}
    save_normal_stats(path, net, {"mean": [0.5] * 3, "std": [0.2] * 3}, stats)
    assert normal_score_floor(path, "latent", 0.0) == -np.inf
    assert normal_score_floor(path, "latent", 0.95) == pytest.approx(19.5)
    assert normal_score_floors(path, "latent", [0.0, 0.5]) == {0.0: -np.inf, 0.5: pytest.approx(15.0)}
    assert normal_score_floors(path, "l1", [0.0, 0.5]) == {0.0: -np.inf}
    with pytest.raises(ValueError, match="applies to score 'latent'"):
        normal_score_floor(path, "l1", 0.9)
    with pytest.raises(ValueError, match="normal_quantile"):
        normal_score_floor(path, "latent", 1.5)


def test_a_model_without_score_quantiles_names_the_fix(tiny_checkpoint):
    with pytest.raises(ValueError, match="write_normal_stats workflow, or pass --normal_quantile 0"):
        normal_score_floor(tiny_checkpoint, "latent", 0.9)
    assert normal_score_floors(tiny_checkpoint, "latent", [0.0, 0.9]) == {0.0: -np.inf}
