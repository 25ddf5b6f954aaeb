import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, kd_loss
from hfkd.utils.errors import UsageError

from .reference import kd as reference_kd
from .reference import kd_dense as reference_kd_dense
from .reference import pixel_rows
from .reference import standardize as reference_standardize


def _inputs(b: int, c: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


def _dense(b: int, c: int, h: int, w: int, scale: float, seed: int, keep: float | None = None):
    """Seeded (B, C, H, W) student and teacher logits, and a (B, H, W) mask keeping about `keep` of the pixels."""
    g = torch.Generator().manual_seed(seed)
    s, t = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * scale for _ in range(2))
    mask = None if keep is None else torch.rand(b, h, w, generator=g) < keep
    return s, t, mask


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


def test_pinned_dense_value_from_reference_code():
    # Pinned from reference.kd_dense (float64 NumPy, one KL per pixel) on these seeded maps, T=4, ~70% of pixels kept.
    s, t, mask = _dense(4, 19, 8, 16, 2.0, seed=103, keep=0.7)
    assert kd_loss(s, t, temperature=4.0, mask=mask).item() == pytest.approx(3.7826691262515806, rel=1e-12)


@pytest.mark.parametrize(
    "shape,scale,temperature,keep",
    [((2, 5, 3, 4), 1.0, 4.0, None), ((3, 19, 4, 6), 3.0, 1.0, 0.6), ((1, 2, 5, 5), 0.5, 2.5, 0.3)],
)
def test_dense_logits_match_the_per_pixel_equation(shape, scale, temperature, keep):
    s, t, mask = _dense(*shape, scale=scale, seed=sum(shape), keep=keep)
    numpy_mask = None if mask is None else mask.numpy()
    expected = reference_kd_dense(s.numpy(), t.numpy(), temperature, numpy_mask)
    assert kd_loss(s, t, temperature=temperature, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    single = kd_loss(s.float(), t.float(), temperature=temperature, mask=mask)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_dense_logits_without_a_mask_are_rows_of_pixels():
    s, t, _ = _dense(2, 7, 3, 5, 2.0, seed=11)
    rows = [torch.from_numpy(pixel_rows(x.numpy())) for x in (s, t)]
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(kd_loss(*rows, temperature=2.0).item(), rel=1e-12)
    everything = torch.ones(2, 3, 5, dtype=torch.bool)
    assert kd_loss(s, t, temperature=2.0, mask=everything).item() == pytest.approx(
        kd_loss(s, t, temperature=2.0).item(), rel=1e-12
    )


def test_dense_logit_standardization_is_per_pixel():
    s, t, mask = _dense(2, 6, 3, 3, 4.0, seed=12, keep=0.5)
    rows_s, rows_t = (reference_standardize(pixel_rows(x.numpy(), mask.numpy())) for x in (s, t))
    expected = reference_kd(rows_s, rows_t, 2.0)
    value = kd_loss(s, t, temperature=2.0, logit_standardization=True, mask=mask)
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_dense_gradient_matches_finite_differences_and_skips_ignored_pixels():
    s, t, mask = _dense(2, 4, 3, 3, 2.0, seed=13, keep=0.5)
    s, t = s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, temperature=3.0, mask=mask), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, temperature=2.0, logit_standardization=True), (s,))
    kd_loss(s, t, temperature=3.0, mask=mask).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()
    # An ignored pixel gets no gradient at all; a kept one does.
    assert s.grad.movedim(1, -1)[~mask].abs().max() == 0 and s.grad.movedim(1, -1)[mask].abs().max() > 0


def test_dense_identical_logits_give_zero_and_an_empty_mask_gives_zero():
    s, _, mask = _dense(2, 5, 4, 4, 3.0, seed=14, keep=0.5)
    assert kd_loss(s, s.clone(), mask=mask).item() == pytest.approx(0.0, abs=1e-12)
    t = s + 1.5 * torch.randn(s.shape, generator=torch.Generator().manual_seed(0), dtype=s.dtype)
    nothing = torch.zeros(2, 4, 4, dtype=torch.bool)
    s.requires_grad_()
    value = kd_loss(s, t, mask=nothing)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_dense_mask_of_the_wrong_shape_is_refused():
    s, t, _ = _dense(2, 5, 4, 6, 1.0, seed=15)
    with pytest.raises(UsageError, match=r"mask has shape \(2, 6, 4\).*need a mask of shape \(2, 4, 6\)"):
        kd_loss(s, t, mask=torch.ones(2, 6, 4, dtype=torch.bool))
    with pytest.raises(UsageError, match="same"):
        kd_loss(s, t[:, :, :2])


def test_module_averages_over_the_batch_pixel_mask():
    s, t, mask = _dense(2, 5, 4, 4, 2.0, seed=16, keep=0.6)
    loss = create_loss("kd", temperature=2.0)
    assert "semantic-segmentation" in loss.tasks and "object-detection" in loss.tasks
    out = loss(s.float(), t.float(), DistillBatch(pixel_mask=mask))
    torch.testing.assert_close(out["loss"], kd_loss(s.float(), t.float(), temperature=2.0, mask=mask), rtol=0, atol=0)
    unmasked = loss(s.float(), t.float(), DistillBatch())["loss"]
    assert not math.isclose(unmasked.item(), out["loss"].item())
    hotter = create_loss("kd", temperature=4.0)(s.float(), t.float(), DistillBatch(pixel_mask=mask))["loss"]
    assert not math.isclose(hotter.item(), out["loss"].item())
