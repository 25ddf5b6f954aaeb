import math

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import SemanticSegmenterOutput

from hfkd.losses import DistillBatch, create_loss, dist_loss
from hfkd.utils.errors import UsageError

from .reference import dist as reference_dist
from .reference import pixel_rows


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


def _dense(b: int, c: int, h: int, w: int, scale: float, seed: int, keep: float | None = None):
    """Seeded (B, C, H, W) student and teacher logits, and a (B, H, W) mask keeping about `keep` of the pixels."""
    g = torch.Generator().manual_seed(seed)
    s, t = (torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * scale for _ in range(2))
    mask = None if keep is None else torch.rand(b, h, w, generator=g) < keep
    return s, t, mask


def _reference_dense(s, t, beta=1.0, gamma=1.0, temperature=1.0, mask=None, use_sigmoid=False):
    numpy_mask = None if mask is None else mask.numpy()
    rows = pixel_rows(s.detach().numpy(), numpy_mask), pixel_rows(t.detach().numpy(), numpy_mask)
    return reference_dist(*rows, beta, gamma, temperature, use_sigmoid=use_sigmoid)


def test_pinned_dense_and_sigmoid_values_from_reference_code():
    # Pinned from reference.dist on reference.pixel_rows (float64 NumPy loops): 19 classes at 8×16 pixels of 2 maps,
    # every pixel (DIST's segmentation defaults); then sigmoid scores of 36 channels (MasKD's RetinaNet form).
    s, t, _ = _dense(2, 19, 8, 16, 2.0, seed=103)
    assert dist_loss(s, t).item() == pytest.approx(2.025245413296232, rel=1e-12)
    s, t, _ = _dense(2, 36, 6, 10, 2.0, seed=104)
    assert dist_loss(s, t, use_sigmoid=True).item() == pytest.approx(2.034708233141876, rel=1e-12)


@pytest.mark.parametrize(
    "shape,scale,beta,gamma,temperature,keep",
    [
        ((2, 19, 4, 6), 2.0, 1.0, 1.0, 1.0, None),
        ((3, 5, 3, 3), 1.0, 2.0, 0.5, 4.0, 0.6),
        ((1, 7, 5, 4), 3.0, 1.0, 1.0, 1.0, 0.3),
    ],
)
def test_dense_logits_match_the_equation_on_pixel_rows(shape, scale, beta, gamma, temperature, keep):
    s, t, mask = _dense(*shape, scale=scale, seed=sum(shape), keep=keep)
    expected, inter, intra = _reference_dense(s, t, beta, gamma, temperature, mask)
    value, terms = dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature, mask=mask, return_terms=True)
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-10)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-10)
    single = dist_loss(s.float(), t.float(), beta=beta, gamma=gamma, temperature=temperature, mask=mask)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sigmoid_scores_match_the_equation(dense, temperature):
    if dense:
        s, t, mask = _dense(2, 12, 3, 4, 2.0, seed=21, keep=0.7)
        expected, inter, intra = _reference_dense(s, t, 1.0, 1.0, temperature, mask, use_sigmoid=True)
    else:
        s, t = (x.double() for x in _inputs(16, 10, 2.0, seed=22))
        mask = None
        expected, inter, intra = reference_dist(s.numpy(), t.numpy(), 1.0, 1.0, temperature, use_sigmoid=True)
    value, terms = dist_loss(s, t, temperature=temperature, use_sigmoid=True, mask=mask, return_terms=True)
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-10)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-10)
    assert not math.isclose(value.item(), dist_loss(s, t, temperature=temperature, mask=mask).item())


def test_dense_gradient_matches_finite_differences_and_skips_ignored_pixels():
    s, t, mask = _dense(2, 4, 3, 3, 2.0, seed=23, keep=0.6)
    s, t = s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, gamma=2.0, mask=mask), (s,))
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, temperature=2.0, use_sigmoid=True, mask=mask), (s,))
    dist_loss(s, t, mask=mask).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()
    assert s.grad.movedim(1, -1)[~mask].abs().max() == 0 and s.grad.movedim(1, -1)[mask].abs().max() > 0


def test_dense_identical_logits_give_almost_zero_and_an_empty_mask_zero():
    s, _, mask = _dense(2, 6, 4, 4, 3.0, seed=24, keep=0.5)
    for use_sigmoid in (False, True):
        # As for rows: not exactly 0, the 1e-8 in the denominators leaves a tiny remainder.
        expected, _, _ = _reference_dense(s, s, mask=mask, use_sigmoid=use_sigmoid)
        assert 0 < expected < 1e-5
        value = dist_loss(s, s.clone(), mask=mask, use_sigmoid=use_sigmoid).item()
        assert value == pytest.approx(expected, rel=1e-6)
    s.requires_grad_()
    value = dist_loss(s, s.detach() + 1.0, mask=torch.zeros(2, 4, 4, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_mismatched_shapes_and_masks_are_refused():
    s, t, _ = _dense(2, 5, 4, 6, 1.0, seed=25)
    with pytest.raises(UsageError, match=r"same .* shape, got student \(2, 5, 4, 6\) and teacher \(2, 5, 2, 3\)"):
        dist_loss(s, t[:, :, ::2, ::2])
    with pytest.raises(UsageError, match=r"need a mask of shape \(2, 4, 6\)"):
        dist_loss(s, t, mask=torch.ones(2, 6, 4, dtype=torch.bool))


def _segmenter(logits, auxiliary=None):
    if auxiliary is None:
        return SemanticSegmenterOutput(logits=logits)
    return {"logits": logits, "auxiliary_logits": auxiliary}


def test_module_on_dense_logits_ignores_the_mask_unless_asked():
    s, t, mask = (x.float() if x.is_floating_point() else x for x in _dense(2, 6, 4, 4, 2.0, seed=26, keep=0.5))
    batch = DistillBatch(pixel_mask=mask)
    loss = create_loss("dist")
    assert {"semantic-segmentation", "object-detection"} <= loss.tasks
    assert loss.hparams() == {
        "beta": 1.0, "gamma": 1.0, "temperature": 1.0, "use_sigmoid": False, "aux_weight": 0.0, "mask_ignored": False,
    }  # fmt: skip
    out = loss(_segmenter(s), _segmenter(t), batch)
    assert set(out) == {"loss", "inter", "intra"}
    # The reference counts every pixel, ignored ones included.
    torch.testing.assert_close(out["loss"], dist_loss(s, t), rtol=0, atol=0)
    masked = create_loss("dist", mask_ignored=True)(_segmenter(s), _segmenter(t), batch)
    torch.testing.assert_close(masked["loss"], dist_loss(s, t, mask=mask), rtol=0, atol=0)
    assert not math.isclose(masked["loss"].item(), out["loss"].item())
    sigmoid = create_loss("dist", use_sigmoid=True)(_segmenter(s), _segmenter(t), batch)
    torch.testing.assert_close(sigmoid["loss"], dist_loss(s, t, use_sigmoid=True), rtol=0, atol=0)


def test_module_adds_the_auxiliary_head_at_its_weight():
    s, t, mask = (x.float() if x.is_floating_point() else x for x in _dense(2, 6, 4, 4, 2.0, seed=27, keep=0.5))
    aux_s, aux_t = _dense(2, 6, 4, 4, 2.0, seed=28)[:2]
    aux_s, aux_t = aux_s.float().requires_grad_(), aux_t.float()
    student, teacher = _segmenter(s, aux_s), _segmenter(t, aux_t)
    batch = DistillBatch(pixel_mask=mask)
    out = create_loss("dist", aux_weight=0.4)(student, teacher, batch)
    assert set(out) == {"loss", "inter", "intra", "aux"}
    main, aux = dist_loss(s, t), dist_loss(aux_s, aux_t)
    torch.testing.assert_close(out["aux"], aux.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out["loss"], main + 0.4 * aux, rtol=0, atol=0)
    out["loss"].backward()
    assert aux_s.grad is not None and torch.isfinite(aux_s.grad).all()
    both = create_loss("dist", aux_weight=0.4, mask_ignored=True)(student, teacher, batch)["loss"]
    expected = dist_loss(s, t, mask=mask) + 0.4 * dist_loss(aux_s, aux_t, mask=mask)
    torch.testing.assert_close(both, expected, rtol=0, atol=0)
    # Without an auxiliary head on either side, the error names the fix.
    for student_out, teacher_out, role in ((_segmenter(s), teacher, "student"), (student, _segmenter(t), "teacher")):
        with pytest.raises(UsageError, match=f"{role} output .* no `auxiliary_logits`.*aux_weight=0"):
            create_loss("dist", aux_weight=0.4)(student_out, teacher_out, batch)
    with pytest.raises(ValueError, match="aux_weight"):
        create_loss("dist", aux_weight=-0.4)
