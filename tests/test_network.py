import pytest
import torch

from scripts.network import Skip96VAE, _UpBlock
from tests_helpers import tiny_net


def test_shapes_train_and_eval():
    net = tiny_net(recon_only=False)
    x = torch.randn(3, 3, 96, 96)
    for training in (True, False):
        net.train(training)
        recon, mu, logvar = net(x)
        assert recon.shape == x.shape
        assert mu.shape == logvar.shape == (3, 8, 3, 3)


def test_default_forward_is_one_tensor_and_defaults_are_the_shipped_widths():
    """What ``verify_net_in_out``/``ckpt_export`` and ``monai.bundle.load`` users get from ``network_def``."""
    net = Skip96VAE().eval()
    assert net.channels == (16, 32, 64, 64, 128, 128) and net.latent_channels == 32
    output = net(torch.randn(2, 3, 96, 96))
    assert isinstance(output, torch.Tensor) and output.shape == (2, 3, 96, 96)


def test_eval_is_deterministic_and_uses_mu():
    net = tiny_net().eval()
    x = torch.randn(2, 3, 96, 96)
    a, b = net(x), net(x)
    assert torch.equal(a, b)
    mu, _, skips = net.encode(x)
    assert torch.allclose(net.decode(mu, skips), a)


def test_training_samples_the_latent():
    net = tiny_net(skip_dropout=0.0).train()
    x = torch.randn(2, 3, 96, 96)
    assert not torch.equal(net(x), net(x))


def test_no_output_activation_reaches_normalised_range():
    """The decoder predicts normalised values, which are negative for most tissue: a sigmoid would forbid that."""
    net = tiny_net().eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(-3.0)
    assert torch.equal(net(torch.randn(1, 3, 96, 96)), torch.full((1, 3, 96, 96), -3.0))


@pytest.mark.parametrize("recon_only", [False, True])
def test_torchscript_matches_eager(recon_only):
    net = tiny_net(recon_only=recon_only).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 3, 96, 96)
    eager, script = net(x), scripted(x)
    if recon_only:
        assert isinstance(script, torch.Tensor)
        assert torch.allclose(eager, script, atol=1e-5)
    else:
        for e, s in zip(eager, script, strict=True):
            assert torch.allclose(e, s, atol=1e-5)


def test_skip_dropout_zeroes_whole_skips_per_sample():
    torch.manual_seed(0)
    block = _UpBlock(4, 4, skip_dropout=0.5, groups=2)
    seen = {}

    def capture(_module, inputs, _output):
        seen["cat"] = inputs[0]

    block.conv.register_forward_hook(capture)
    skip = torch.ones(400, 4, 8, 8)
    block.train()(torch.zeros(400, 4, 4, 4), skip)
    kept = seen["cat"][:, 4:]  # the skip half of the concatenation
    per_sample = kept.flatten(1)
    whole = (per_sample == 0).all(1) | (per_sample == 1).all(1)
    assert whole.all(), "a skip tensor was partly dropped"
    assert 0.4 < (per_sample == 0).all(1).float().mean() < 0.6
    block.eval()(torch.zeros(400, 4, 4, 4), skip)
    assert (seen["cat"][:, 4:] == 1).all(), "skips must not be dropped at evaluation"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="6 widths"):
        Skip96VAE(channels=(8, 8, 8))
    with pytest.raises(ValueError, match="skip_dropout"):
        Skip96VAE(skip_dropout=1.0)
