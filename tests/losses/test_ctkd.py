import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss
from hfkd.losses.ctkd import cosine_lambda

from .reference import kd as reference_kd


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 10, generator=g, dtype=torch.float64), torch.randn(8, 10, generator=g, dtype=torch.float64)


def test_initial_temperature_is_the_references():
    # T = 1 + 20·σ(1) = 15.62 (the reference's T₀ with its defaults).
    assert create_loss("ctkd").temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)))
    assert create_loss("ctkd").temperature().item() == pytest.approx(15.62, abs=5e-3)


def test_lambda_schedule_is_the_cosine_curriculum():
    # λ(e) = −1 + (1 + cos(π·min(e, 10)/10))/2 on the 1-based epoch.
    for epoch, expected in [(0, 0.0), (5, -0.5), (10, -1.0), (30, -1.0)]:
        assert cosine_lambda(epoch, 10.0) == pytest.approx(expected, abs=1e-12)
    s, t = _inputs()
    loss = create_loss("ctkd")
    assert loss(s, t, DistillBatch(epoch=0.3))["lambda"].item() == pytest.approx(-1 + (1 + math.cos(math.pi / 10)) / 2)
    assert loss(s, t, DistillBatch(epoch=9.0))["lambda"].item() == pytest.approx(-1.0)


def test_loss_is_kd_at_the_learned_temperature_and_theta_ascends():
    s, t = _inputs(1)
    s.requires_grad_()
    loss = create_loss("ctkd", init_theta=0.3).double()
    out = loss(s, t, DistillBatch(epoch=4.0))
    temperature = 1 + 20 / (1 + math.exp(-0.3))
    assert out["temperature"].item() == pytest.approx(temperature)
    assert out["loss"].item() == pytest.approx(reference_kd(s.detach().numpy(), t.numpy(), temperature), rel=1e-10)
    out["loss"].backward()
    # Reference gradient of the plain KD loss w.r.t. θ, then scaled by λ(5) by the reversal layer.
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    temp = 1 + 20 * torch.sigmoid(theta)
    p_t = torch.softmax(t / temp, 1)
    plain = temp**2 * (p_t * (torch.log_softmax(t / temp, 1) - torch.log_softmax(s.detach() / temp, 1))).sum(1).mean()
    (grad,) = torch.autograd.grad(plain, theta)
    assert loss.theta.grad.item() == pytest.approx(cosine_lambda(5, 10.0) * grad.item(), rel=1e-8)
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_identical_logits_give_zero_and_hyperparameters_matter():
    s, t = _inputs(2)
    assert create_loss("ctkd")(s, s.clone(), DistillBatch())["loss"].item() == pytest.approx(0.0, abs=1e-12)
    base = create_loss("ctkd")(s, t, DistillBatch())["loss"].item()
    assert not math.isclose(create_loss("ctkd", t_end=5.0)(s, t, DistillBatch())["loss"].item(), base)
    with pytest.raises(ValueError, match="t_end"):
        create_loss("ctkd", t_end=0)


def test_theta_is_a_trainable_parameter():
    loss = create_loss("ctkd")
    assert [name for name, p in loss.named_parameters() if p.requires_grad] == ["theta"]
