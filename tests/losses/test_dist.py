import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, dist_loss

from .reference import dist as reference_dist


def _inputs(b: int, c: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


@pytest.mark.parametrize(
    "beta,gamma,temperature,expected", [(1.0, 1.0, 1.0, 1.9921438581461357), (2.0, 2.0, 4.0, 63.72352426031446)]
)
def test_pinned_values_from_reference_code(beta, gamma, temperature, expected):
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    value = dist_loss(s.double(), t.double(), beta=beta, gamma=gamma, temperature=temperature).item()
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "b,c,scale,beta,gamma,temperature",
    [(8, 10, 1.0, 1.0, 1.0, 1.0), (32, 1000, 3.0, 1.0, 1.0, 1.0), (4, 5, 0.5, 2.0, 0.5, 4.0)],
)
def test_matches_paper_equation(b, c, scale, beta, gamma, temperature):
    s, t = _inputs(b, c, scale, seed=b * 7 + c)
    expected, inter, intra = reference_dist(s.double().numpy(), t.double().numpy(), beta, gamma, temperature)
    got = dist_loss(s.double(), t.double(), beta=beta, gamma=gamma, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature).item() == pytest.approx(expected, rel=1e-4)


def test_eps_sits_on_the_product_of_norms():
    # With 1000 classes and a small batch some columns have tiny variance, so where eps goes shows.
    s, t = _inputs(4, 1000, 4.0, seed=1)
    y_s, y_t = s.double().softmax(1).numpy(), t.double().softmax(1).numpy()
    exact_intra = 1 - np.mean([np.corrcoef(y_s[:, j], y_t[:, j])[0, 1] for j in range(1000)])
    exact_inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(4)])
    expected, inter, intra = reference_dist(s.double().numpy(), t.double().numpy(), 1.0, 1.0, 1.0)
    assert inter == pytest.approx(exact_inter, rel=1e-6)
    assert abs(intra - exact_intra) > 1e-3
    assert dist_loss(s.double(), t.double()).item() == pytest.approx(expected, rel=1e-10)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _inputs(5, 6, 2.0, seed=3)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, beta=1.0, gamma=2.0, temperature=2.0), (s,))
    dist_loss(s, t).backward()
    assert t.grad is None


def test_identical_logits_give_zero():
    s, _ = _inputs(8, 10, 3.0, seed=0)
    # Not exactly 0: the 1e-8 in the denominator leaves 1e-8/‖a−ā‖² per row or column.
    expected, _, _ = reference_dist(s.double().numpy(), s.double().numpy(), 1.0, 1.0, 1.0)
    assert 0 < expected < 1e-5
    assert dist_loss(s.double(), s.double().clone()).item() == pytest.approx(expected, rel=1e-8)


def test_module_output_and_hyperparameters():
    s, t = _inputs(8, 10, 1.0, seed=7)
    out = create_loss("dist")(s, t, DistillBatch())
    assert set(out) == {"loss", "inter", "intra"}
    assert out["loss"].item() == pytest.approx(out["inter"].item() + out["intra"].item(), rel=1e-6)
    weighted = create_loss("dist", beta=2.0, gamma=0.5, temperature=4.0)(s, t, DistillBatch())
    assert not math.isclose(weighted["loss"].item(), out["loss"].item())
    # The module is its function: the same value, bit for bit, and the same logged terms.
    expected, terms = dist_loss(s, t, beta=2.0, gamma=0.5, temperature=4.0, return_terms=True)
    torch.testing.assert_close(weighted["loss"], expected, rtol=0, atol=0)
    torch.testing.assert_close({k: weighted[k] for k in terms}, terms, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gamma"):
        create_loss("dist", gamma=-0.1)
