import pytest
import torch
from ignite.engine import Engine, Events
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from scripts.handlers import LinearScheduleHandler
from scripts.losses import BetaVAELoss, kl_divergence, loss_term, reconstruction_error


def test_kl_matches_closed_form_in_nats_summed_over_latent():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)
    assert torch.allclose(kl_divergence(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)), torch.zeros(2))


def test_reconstruction_errors():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0)
    assert torch.allclose(reconstruction_error(a, b, "l1"), torch.full((2,), 2.0))
    assert torch.allclose(reconstruction_error(a, b, "mse"), torch.full((2,), 4.0))


def _prediction(kl_scale: float):
    recon, target = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.5)
    mu = torch.full((2, 1, 3, 3), kl_scale, requires_grad=True)
    return (recon, mu, torch.zeros(2, 1, 3, 3)), target, mu


def test_capacity_makes_kl_below_c_free():
    prediction, target, mu = _prediction(1.0)  # KL = 0.5 * 9 * 1 = 4.5 nats per sample
    loss = BetaVAELoss("l1", beta=2.0, capacity=10.0)(prediction, target)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.count_nonzero(mu.grad) == 0


def test_kl_above_capacity_is_penalised_by_beta():
    prediction, target, _ = _prediction(2.0)  # KL = 0.5 * 9 * 4 = 18 nats
    assert BetaVAELoss("l1", beta=2.0, capacity=10.0)(prediction, target).item() == pytest.approx(0.5 + 2.0 * 8.0)
    assert BetaVAELoss("mse", beta=0.0, capacity=0.0)(prediction, target).item() == pytest.approx(0.25)


def test_tracked_capacity_penalises_kl_below_c_too():
    prediction, target, mu = _prediction(1.0)  # KL = 4.5 nats, C = 10
    loss = BetaVAELoss("l1", beta=2.0, capacity=10.0, track_capacity=True)(prediction, target)
    assert loss.item() == pytest.approx(0.5 + 2.0 * 5.5)
    loss.backward()
    assert bool((mu.grad < 0).all())  # the gradient pushes |mu|, and so the KL, up towards C
    prediction, target, _ = _prediction(2.0)  # KL = 18 nats: above C both forms agree
    assert BetaVAELoss("l1", beta=2.0, capacity=10.0, track_capacity=True)(prediction, target).item() == pytest.approx(
        0.5 + 2.0 * 8.0
    )


def test_loss_terms_for_metrics():
    prediction, target, _ = _prediction(2.0)
    assert loss_term("kl")(prediction, target).item() == pytest.approx(18.0)
    assert loss_term("recon", "mse")(prediction, target).item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        BetaVAELoss("huber")


def test_linear_schedules_follow_the_epoch_and_resume():
    loss = BetaVAELoss()
    beta = LinearScheduleHandler(loss, "beta", end=1.0, epochs=5)
    capacity = LinearScheduleHandler(loss, "capacity", end=120.0, epochs=20)
    assert [beta.value(e) for e in (1, 2, 6, 9)] == [0.0, 0.2, 1.0, 1.0]
    assert capacity.value(11) == pytest.approx(60.0)

    seen = []
    engine = Engine(lambda e, b: None)
    beta.attach(engine)
    capacity.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((loss.beta, loss.capacity)))
    engine.run([0], max_epochs=3)
    assert seen == [(0.0, 0.0), (0.2, 6.0), (0.4, 12.0)]
    assert engine.state.metrics["beta"] == 0.4

    resumed = Engine(lambda e, b: None)
    beta.attach(resumed)
    capacity.attach(resumed)
    resumed.load_state_dict(engine.state_dict())
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((loss.beta, loss.capacity)))
    resumed.run([0], max_epochs=4)
    assert seen[-1] == (pytest.approx(0.6), pytest.approx(18.0))


def test_schedule_refuses_unknown_attribute():
    with pytest.raises(AttributeError, match="capacty"):
        LinearScheduleHandler(BetaVAELoss(), "capacty", end=1.0, epochs=1)
