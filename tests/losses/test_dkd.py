import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, dkd_loss

from .reference import dkd as reference_dkd


def _inputs(b: int, c: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale
    return s, t, torch.randint(0, c, (b,), generator=g)


def test_pinned_value_from_reference_code():
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    y = torch.randint(0, 100, (64,), generator=g)
    value = dkd_loss(s.double(), t.double(), y, alpha=1.0, beta=8.0, temperature=4.0).item()
    assert value == pytest.approx(8.000030633288118, rel=1e-12)


@pytest.mark.parametrize(
    "b,c,scale,alpha,beta,temperature",
    [(8, 10, 1.0, 1.0, 8.0, 4.0), (5, 100, 4.0, 0.5, 2.0, 1.0), (16, 3, 0.3, 2.0, 6.0, 2.0)],
)
def test_matches_paper_equation(b, c, scale, alpha, beta, temperature):
    s, t, y = _inputs(b, c, scale, seed=b + c)
    expected, tckd, nckd = reference_dkd(s.double().numpy(), t.double().numpy(), y.numpy(), alpha, beta, temperature)
    got = dkd_loss(s.double(), t.double(), y, alpha=alpha, beta=beta, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    _, terms = dkd_loss(s.double(), t.double(), y, temperature=temperature, return_terms=True)
    got_tckd, got_nckd = terms["tckd"], terms["nckd"]
    assert (got_tckd.item(), got_nckd.item()) == pytest.approx((tckd, nckd), rel=1e-9)
    assert dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=temperature).item() == pytest.approx(
        expected, rel=1e-4
    )


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t, y = _inputs(4, 6, 2.0, seed=11)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, alpha=1.0, beta=8.0, temperature=2.0), (s,))
    dkd_loss(s, t, y).backward()
    assert t.grad is None


def test_finite_when_student_target_probability_underflows():
    s, t, y = _inputs(8, 10, 1.0, seed=2)
    s = s.clone()
    s[torch.arange(8), y] = -1e4  # softmax target probability underflows to exactly 0
    assert (torch.softmax(s / 4, dim=1)[torch.arange(8), y] == 0).all()
    s.requires_grad_()
    out = dkd_loss(s, t, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_gradient_finite_when_the_teachers_target_logit_leads_by_far():
    # A confident teacher (a detection teacher's RoI rows): exp() of its target entry would overflow in float32.
    s, t, y = _inputs(8, 10, 1.0, seed=5)
    t = t.clone()
    t[torch.arange(8), y] = 150.0  # exp(150) is inf in float32, finite in the float64 reference
    s.requires_grad_()
    out = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=1.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    # In float64 nothing overflows (and 1 - p_t underflows in the direct equation): the float32 value must agree.
    expected = dkd_loss(s.detach().double(), t.double(), y, alpha=1.0, beta=8.0, temperature=1.0)
    assert out.item() == pytest.approx(expected.item(), rel=1e-4)


def test_identical_logits_give_zero():
    s, _, y = _inputs(8, 10, 3.0, seed=0)
    assert dkd_loss(s, s.clone(), y).item() == pytest.approx(0.0, abs=1e-5)


def test_module_warmup_reads_the_epoch():
    s, t, y = _inputs(8, 10, 1.0, seed=4)
    loss = create_loss("dkd")
    full = dkd_loss(s, t, y).item()
    out = loss(s, t, DistillBatch(labels=y, epoch=0.0))
    assert set(out) == {"loss", "tckd", "nckd", "warmup"}
    # mdistiller: min(epoch / 20, 1) with a 1-based epoch, i.e. 1/20 throughout the first epoch.
    assert out["loss"].item() == pytest.approx(full / 20, rel=1e-6)
    assert loss(s, t, DistillBatch(labels=y, epoch=0.9))["warmup"].item() == pytest.approx(1 / 20)
    assert loss(s, t, DistillBatch(labels=y, epoch=9.5))["warmup"].item() == pytest.approx(10 / 20)
    assert loss(s, t, DistillBatch(labels=y, epoch=25.0))["loss"].item() == pytest.approx(full, rel=1e-6)
    imagenet = create_loss("dkd", beta=0.5, temperature=1.0, warmup_epochs=1)
    assert imagenet(s, t, DistillBatch(labels=y, epoch=0.0))["warmup"].item() == 1.0


def test_hyperparameters_change_the_value_and_are_validated():
    s, t, y = _inputs(8, 10, 1.0, seed=9)
    base = dkd_loss(s, t, y).item()
    assert not math.isclose(dkd_loss(s, t, y, beta=2.0).item(), base)
    assert not math.isclose(dkd_loss(s, t, y, alpha=3.0).item(), base)
    assert not math.isclose(dkd_loss(s, t, y, temperature=1.0).item(), base)
    with pytest.raises(ValueError, match="temperature"):
        create_loss("dkd", temperature=0)
    with pytest.raises(ValueError, match="beta"):
        create_loss("dkd", beta=-1)
    with pytest.raises(ValueError, match="labels"):
        create_loss("dkd")(s, t, DistillBatch())
