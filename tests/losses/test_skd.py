import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, kd_loss, skd_loss, skd_total_loss
from hfkd.losses._functional import median_confidence_masks

from .reference import median_fractions as reference_median_fractions
from .reference import skd as reference_skd
from .reference import skd_direction as reference_skd_direction


def _inputs(b: int, c: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


def test_pinned_values_from_reference_code():
    # Both numbers come from the NumPy reference implementation in reference.py (skd_direction, skd).
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    assert skd_loss(s.double(), t.double(), tikhonov=0.1).item() == pytest.approx(0.035766901058831284, rel=1e-12)
    out = create_loss("skd")(s.double(), t.double(), DistillBatch())
    assert out["loss"].item() == pytest.approx(0.5171208866080499, rel=1e-12)
    assert (out["frac_batch"].item(), out["frac_class"].item()) == (0.5, 0.5)


@pytest.mark.parametrize(
    "b,c,scale,temperature,tikhonov",
    [(8, 10, 1.0, 4.0, 0.1), (5, 100, 4.0, 1.0, 1e-3), (16, 3, 0.3, 2.0, 1e-5), (7, 20, 2.0, 4.0, 1e-4)],
)
def test_matches_reference_code(b, c, scale, temperature, tikhonov):
    s, t = _inputs(b, c, scale, seed=b * 13 + c)
    expected, kd, direction, frac_batch, frac_class = reference_skd(
        s.double().numpy(), t.double().numpy(), temperature, tikhonov
    )
    _, got = skd_total_loss(s.double(), t.double(), temperature=temperature, tikhonov=tikhonov, return_terms=True)
    names = ("kd", "direction", "frac_batch", "frac_class")
    assert [got[name].item() for name in names] == pytest.approx([kd, direction, frac_batch, frac_class], rel=1e-9)
    out = create_loss("skd", temperature=temperature, tikhonov=tikhonov)(s.double(), t.double(), DistillBatch())
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)
    out32 = create_loss("skd", temperature=temperature, tikhonov=tikhonov)(s, t, DistillBatch())
    assert out32["loss"].dtype == torch.float32
    assert out32["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("b,c", [(8, 10), (7, 10), (64, 100), (5, 1000), (2, 3)])
def test_median_masks_match_numpy_percentile(b, c):
    _, t = _inputs(b, c, 3.0, seed=b + c)
    batch_mask, class_mask = median_confidence_masks(t.double())
    assert batch_mask.shape == (b,) and class_mask.shape == (c,)
    frac_batch, frac_class = reference_median_fractions(t.double().numpy())
    assert (batch_mask.double().mean().item(), class_mask.double().mean().item()) == (frac_batch, frac_class)
    # Odd counts keep the median element itself: (n + 1) / 2 of n.
    assert batch_mask.sum().item() == (b + 1) // 2


def test_direction_uses_the_covariance_with_gradient():
    s, t = _inputs(6, 4, 2.0, seed=5)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    # A small λ makes cov(D) dominate Σ, so a detached Σ would fail the finite-difference check.
    assert torch.autograd.gradcheck(lambda x: skd_loss(x, t, tikhonov=1e-4), (s,))

    def kd_plus_direction(x):
        terms = skd_total_loss(x, t, temperature=2.0, tikhonov=0.1, return_terms=True)[1]
        return terms["kd"] + terms["direction"]

    assert torch.autograd.gradcheck(kd_plus_direction, (s,))
    loss = create_loss("skd")(s, t, DistillBatch())["loss"]
    loss.backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_logits_give_zero_with_finite_gradient():
    s, _ = _inputs(8, 10, 3.0, seed=0)
    s = s.double().requires_grad_()
    direction = skd_loss(s, s.detach().clone())
    assert direction.item() == 0.0
    assert reference_skd_direction(s.detach().numpy(), s.detach().numpy(), 0.1) == 0.0
    direction.backward()
    assert torch.isfinite(s.grad).all()
    out = create_loss("skd")(s, s.detach().clone(), DistillBatch())
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-12)


def test_direction_ignores_row_scale_of_the_logits():
    # Rows are L2-normalised first, so only the direction of each logit vector matters.
    s, t = _inputs(8, 10, 1.0, seed=8)
    scale = torch.rand(8, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5 + 0.1
    assert skd_loss(s.double() * scale, t.double()).item() == pytest.approx(skd_loss(s.double(), t.double()).item())


def test_module_output_and_hyperparameters():
    s, t = _inputs(8, 10, 1.0, seed=7)
    s.requires_grad_()
    t.requires_grad_()
    loss = create_loss("skd")
    out = loss(s, t, DistillBatch())
    assert set(out) == {"loss", "kd", "direction", "frac_batch", "frac_class"}
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    expected = out["kd"] * out["frac_batch"] + out["direction"] * out["frac_class"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(kd_loss(s, t).item(), rel=1e-6)
    out["loss"].backward()
    assert s.grad is not None and t.grad is None
    assert loss.hparams() == {"temperature": 4.0, "tikhonov": 0.1}
    for kwargs in ({"temperature": 2.0}, {"tikhonov": 1e-3}):
        other = create_loss("skd", **kwargs)(s, t, DistillBatch())["loss"]
        assert not np.isclose(other.item(), out["loss"].item())


def test_half_precision_inputs_compute_in_float32():
    s, t = _inputs(8, 10, 1.0, seed=5)
    out = create_loss("skd")(s.bfloat16(), t.bfloat16(), DistillBatch())
    assert out["loss"].dtype == torch.float32
    expected = reference_skd(s.bfloat16().double().numpy(), t.bfloat16().double().numpy(), 4.0, 0.1)[0]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("kwargs,name", [({"temperature": 0.0}, "temperature"), ({"tikhonov": -0.1}, "tikhonov")])
def test_rejects_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        create_loss("skd", **kwargs)


def test_needs_two_samples():
    s, t = _inputs(1, 10, 1.0, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        skd_loss(s, t)
