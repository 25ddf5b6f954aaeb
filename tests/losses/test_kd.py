import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, kd_loss

from .reference import kd as reference_kd


def _inputs(b: int, c: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


def test_pinned_value_from_reference_code():
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    value = kd_loss(s.double(), t.double(), temperature=4.0).item()
    assert value == pytest.approx(0.9984748721572688, rel=1e-12)


@pytest.mark.parametrize("b,c,scale,temperature", [(8, 10, 1.0, 4.0), (3, 100, 5.0, 1.0), (16, 7, 0.1, 2.5)])
def test_matches_paper_equation(b, c, scale, temperature):
    s, t = _inputs(b, c, scale, seed=b * c)
    expected = reference_kd(s.double().numpy(), t.double().numpy(), temperature)
    assert kd_loss(s.double(), t.double(), temperature=temperature).item() == pytest.approx(expected, rel=1e-10)
    assert kd_loss(s, t, temperature=temperature).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _inputs(4, 6, 2.0, seed=3)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, temperature=3.0), (s,))
    kd_loss(s, t, temperature=3.0).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_logits_give_zero():
    s, _ = _inputs(8, 10, 3.0, seed=0)
    assert kd_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_half_precision_inputs_compute_in_float32():
    s, t = _inputs(8, 10, 1.0, seed=5)
    out = kd_loss(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    expected = reference_kd(s.bfloat16().double().numpy(), t.bfloat16().double().numpy(), 4.0)
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_module_output_and_hyperparameters():
    s, t = _inputs(8, 10, 1.0, seed=7)
    s.requires_grad_()
    loss = create_loss("kd")
    out = loss(s, t, DistillBatch())
    assert set(out) == {"loss", "kd"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert s.grad is not None
    assert loss.hparams() == {"temperature": 4.0, "logit_standardization": False}
    other = create_loss("kd", temperature=1.0)(s, t, DistillBatch())["loss"]
    assert not np.isclose(other.item(), out["loss"].item())


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_rejects_non_positive_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        create_loss("kd", temperature=bad)
