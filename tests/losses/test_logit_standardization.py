import inspect
import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, dkd_loss, kd_loss, standardize_logits

from .reference import dkd as reference_dkd
from .reference import kd as reference_kd
from .reference import standardize as reference_standardize


def _inputs(b: int, c: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale
    return s, t, torch.randint(0, c, (b,), generator=g)


def _affine(z: torch.Tensor, seed: int) -> torch.Tensor:
    """A different positive scale and shift for every row."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(z.shape[0], 1, generator=g, dtype=z.dtype) * 20 + 0.05
    shift = torch.randn(z.shape[0], 1, generator=g, dtype=z.dtype) * 50
    return z * scale + shift


def test_pinned_values_from_reference_code():
    # From the NumPy reference implementation in reference.py: kd / dkd applied to standardize(s), standardize(t).
    g = torch.Generator().manual_seed(103)
    s, t = torch.randn(64, 100, generator=g), torch.randn(64, 100, generator=g)
    y = torch.randint(0, 100, (64,), generator=g)
    kd_value = kd_loss(s.double(), t.double(), temperature=2.0, logit_standardization=True).item()
    assert kd_value == pytest.approx(0.9821196087747851, rel=1e-12)
    dkd_value = dkd_loss(s.double(), t.double(), y, temperature=2.0, logit_standardization=True).item()
    assert dkd_value == pytest.approx(7.864311366084588, rel=1e-12)


@pytest.mark.parametrize("b,c,scale", [(8, 10, 1.0), (3, 100, 50.0), (16, 2, 0.01), (4, 1000, 3.0)])
def test_standardize_matches_reference_and_has_zero_mean_unit_std(b, c, scale):
    s, _, _ = _inputs(b, c, scale, seed=b + c)
    z = standardize_logits(s.double())
    assert z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), reference_standardize(s.double().numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z.mean(dim=1).numpy(), 0.0, atol=1e-12)
    # 1e-7 sits on the std, so the unbiased std of a row is std / (std + 1e-7): one up to 1e-7 / std.
    std = s.double().std(dim=1)
    np.testing.assert_allclose(z.std(dim=1).numpy(), (std / (std + 1e-7)).numpy(), rtol=1e-12)
    assert ((z.std(dim=1) - 1).abs() < 1.01e-7 / std).all()
    z32 = standardize_logits(s)
    assert z32.dtype == torch.float32
    np.testing.assert_allclose(z32.numpy(), z.numpy(), rtol=1e-4, atol=1e-5)


def test_standardize_edge_cases_and_dtypes():
    assert standardize_logits(torch.full((2, 5), 3.0)).abs().max().item() == 0.0
    assert standardize_logits(torch.randn(2, 5).bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2 classes"):
        standardize_logits(torch.randn(4, 1))
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(standardize_logits, (x,))


@pytest.mark.parametrize("b,c,scale,temperature", [(8, 10, 1.0, 2.0), (3, 100, 5.0, 1.0), (16, 7, 0.1, 4.0)])
def test_standardized_kd_matches_reference(b, c, scale, temperature):
    s, t, _ = _inputs(b, c, scale, seed=b * c)
    sn, tn = reference_standardize(s.double().numpy()), reference_standardize(t.double().numpy())
    expected = reference_kd(sn, tn, temperature)
    got = kd_loss(s.double(), t.double(), temperature=temperature, logit_standardization=True)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got32 = kd_loss(s, t, temperature=temperature, logit_standardization=True)
    assert got32.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "b,c,scale,alpha,beta,temperature",
    [(8, 10, 1.0, 1.0, 8.0, 2.0), (5, 100, 4.0, 9.0, 72.0, 2.0), (16, 3, 0.3, 2, 6, 4)],
)
def test_standardized_dkd_matches_reference(b, c, scale, alpha, beta, temperature):
    s, t, y = _inputs(b, c, scale, seed=b + c)
    sn, tn = reference_standardize(s.double().numpy()), reference_standardize(t.double().numpy())
    expected, tckd, nckd = reference_dkd(sn, tn, y.numpy(), alpha, beta, temperature)
    got = dkd_loss(
        s.double(), t.double(), y, alpha=alpha, beta=beta, temperature=temperature, logit_standardization=True
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)
    _, terms = dkd_loss(
        s.double(), t.double(), y, temperature=temperature, logit_standardization=True, return_terms=True
    )
    assert [terms["tckd"].item(), terms["nckd"].item()] == pytest.approx([tckd, nckd], rel=1e-9)


def test_gradients_match_finite_differences_and_skip_teacher():
    s, t, y = _inputs(4, 6, 2.0, seed=3)
    s, t = s.double().requires_grad_(), t.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, temperature=2.0, logit_standardization=True), (s,))
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, temperature=2.0, logit_standardization=True), (s,))
    (kd_loss(s, t, logit_standardization=True) + dkd_loss(s, t, y, logit_standardization=True)).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_invariant_to_per_row_affine_maps_of_either_logits():
    s, t, y = _inputs(8, 10, 1.0, seed=21)
    s, t = s.double(), t.double()
    s2, t2 = _affine(s, seed=1), _affine(t, seed=2)
    # Exact up to the 1e-7 on the std, which the per-row scale moves.
    base = kd_loss(s, t, temperature=2.0, logit_standardization=True).item()
    assert kd_loss(s2, t2, temperature=2.0, logit_standardization=True).item() == pytest.approx(base, rel=1e-6)
    assert not math.isclose(kd_loss(s2, t2, temperature=2.0).item(), kd_loss(s, t, temperature=2.0).item())
    base = dkd_loss(s, t, y, temperature=2.0, logit_standardization=True).item()
    assert dkd_loss(s2, t2, y, temperature=2.0, logit_standardization=True).item() == pytest.approx(base, rel=1e-6)
    assert not math.isclose(dkd_loss(s2, t2, y, temperature=2.0).item(), dkd_loss(s, t, y, temperature=2.0).item())


def test_affine_copy_of_the_teacher_gives_zero():
    _, t, y = _inputs(8, 10, 3.0, seed=0)
    t = t.double()
    student = _affine(t, seed=5)
    assert kd_loss(student, t, logit_standardization=True).item() == pytest.approx(0.0, abs=1e-10)
    assert dkd_loss(student, t, y, logit_standardization=True).item() == pytest.approx(0.0, abs=1e-10)
    assert kd_loss(t, t.clone(), logit_standardization=True).item() == 0.0


def test_modules_take_the_flag_and_default_to_off():
    s, t, y = _inputs(8, 10, 1.0, seed=7)
    s.requires_grad_()
    t.requires_grad_()
    for key, batch in (("kd", DistillBatch()), ("dkd", DistillBatch(labels=y, epoch=100.0))):
        assert create_loss(key).hparams()["logit_standardization"] is False
        plain = create_loss(key)(s, t, batch)["loss"]
        out = create_loss(key, logit_standardization=True)(s, t, batch)
        assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
        assert not math.isclose(out["loss"].item(), plain.item())
        other = create_loss(key, logit_standardization=True, temperature=1.0)(s, t, batch)["loss"]
        assert not math.isclose(other.item(), out["loss"].item())
        s.grad = None
        out["loss"].backward()
        assert s.grad is not None and t.grad is None
        with pytest.raises(ValueError, match="logit_standardization"):
            create_loss(key, logit_standardization="yes")
    # The pure functions keep their positional interface: the flag is a keyword-only parameter, off by default.
    for fn in (kd_loss, dkd_loss):
        flag = inspect.signature(fn).parameters["logit_standardization"]
        assert flag.kind is inspect.Parameter.KEYWORD_ONLY and flag.default is False


def test_reference_cli_settings_for_dkd():
    # `--logit-stand --base-temp 2 --kd-weight 9` multiplies DKD's alpha and beta by 9 and sets T=2.
    s, t, y = _inputs(8, 10, 1.0, seed=9)
    batch = DistillBatch(labels=y, epoch=100.0)
    cli = create_loss("dkd", alpha=9.0, beta=72.0, temperature=2.0, logit_standardization=True)(s, t, batch)
    unit = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=2.0, logit_standardization=True)
    assert cli["loss"].item() == pytest.approx(9 * unit.item(), rel=1e-6)
