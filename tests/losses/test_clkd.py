import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, clkd_loss, create_loss

from .reference import clkd as reference_clkd


def _inputs(b: int, c: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


def test_pinned_value_from_reference_code():
    # From the NumPy reference implementation in reference.py (clkd with weights 0.5, 1.0, 0.4).
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    assert clkd_loss(s.double(), t.double()).item() == pytest.approx(0.041602525116343575, rel=1e-12)


@pytest.mark.parametrize(
    "b,c,scale,weights",
    [(8, 10, 1.0, (0.5, 1.0, 0.4)), (5, 100, 4.0, (1.0, 2.0, 0.0)), (16, 3, 0.3, (0.0, 0.5, 3.0)), (2, 7, 10.0, None)],
)
def test_matches_reference_code(b, c, scale, weights):
    weights = weights or (0.5, 1.0, 0.4)
    s, t = _inputs(b, c, scale, seed=b * 11 + c)
    expected, instance, class_, class_corr = reference_clkd(s.double().numpy(), t.double().numpy(), *weights)
    kwargs = dict(zip(("instance_weight", "class_weight", "correlation_weight"), weights))
    assert clkd_loss(s.double(), t.double(), **kwargs).item() == pytest.approx(expected, rel=1e-10)
    _, named = clkd_loss(s.double(), t.double(), return_terms=True)
    terms = [named[name].item() for name in ("instance", "class", "class_corr")]
    assert terms == pytest.approx([instance, class_, class_corr], rel=1e-10)
    assert clkd_loss(s, t, **kwargs).item() == pytest.approx(expected, rel=1e-4)


def test_defaults_reproduce_the_reference_weighting():
    s, t = _inputs(8, 10, 2.0, seed=4)
    _, terms = clkd_loss(s.double(), t.double(), return_terms=True)
    instance, class_, class_corr = terms["instance"], terms["class"], terms["class_corr"]
    # StreamLined: mu·(instance + beta·class) + vu·class_corr with mu 0.5, beta 2, vu 0.4.
    assert clkd_loss(s.double(), t.double()).item() == 0.5 * (instance + 2.0 * class_).item() + 0.4 * class_corr.item()


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _inputs(5, 6, 2.0, seed=3)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: clkd_loss(x, t, class_weight=2.0, correlation_weight=1.0), (s,))
    clkd_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_logits_give_zero():
    s, _ = _inputs(8, 10, 3.0, seed=0)
    s = s.requires_grad_()
    loss = clkd_loss(s, s.detach().clone())
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_module_output_and_hyperparameters():
    s, t = _inputs(8, 10, 1.0, seed=7)
    s.requires_grad_()
    t.requires_grad_()
    loss = create_loss("clkd")
    out = loss(s, t, DistillBatch())
    assert set(out) == {"loss", "instance", "class", "class_corr"}
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert s.grad is not None and t.grad is None
    assert loss.hparams() == {"instance_weight": 0.5, "class_weight": 1.0, "correlation_weight": 0.4}
    for kwargs in ({"instance_weight": 1.0}, {"class_weight": 0.1}, {"correlation_weight": 2.0}):
        other = create_loss("clkd", **kwargs)(s, t, DistillBatch())["loss"]
        assert not np.isclose(other.item(), out["loss"].item())


def test_half_precision_inputs_compute_in_float32():
    s, t = _inputs(8, 10, 1.0, seed=5)
    out = clkd_loss(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    expected = reference_clkd(s.bfloat16().double().numpy(), t.bfloat16().double().numpy(), 0.5, 1.0, 0.4)[0]
    assert out.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["instance_weight", "class_weight", "correlation_weight"])
def test_rejects_negative_weights(name):
    with pytest.raises(ValueError, match=name):
        create_loss("clkd", **{name: -0.1})
