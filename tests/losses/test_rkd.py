import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, rkd_loss

from .feature_inputs import output_with as _output
from .feature_reference import rkd as reference_rkd


def _embeds(b, d_student, d_teacher, scale, seed):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, d_student, generator=g, dtype=torch.float64) * scale
    return student, torch.randn(b, d_teacher, generator=g, dtype=torch.float64) * scale


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.rkd (float64 NumPy loops) on these seeded embeddings, weights 25 and 50.
    s, t = _embeds(16, 32, 64, 1.0, seed=103)
    assert rkd_loss(s, t).item() == pytest.approx(0.6658156910832373, rel=1e-12)


@pytest.mark.parametrize(
    "b,d_student,d_teacher,scale,distance_weight,angle_weight",
    [(8, 10, 10, 1.0, 25.0, 50.0), (5, 16, 64, 10.0, 1.0, 2.0), (12, 3, 7, 0.01, 0.0, 1.0), (6, 4, 4, 3.0, 1.0, 0.0)],
)
def test_matches_paper_equation(b, d_student, d_teacher, scale, distance_weight, angle_weight):
    s, t = _embeds(b, d_student, d_teacher, scale, seed=b + d_student)
    expected, distance, angle = reference_rkd(s.numpy(), t.numpy(), distance_weight, angle_weight)
    got = rkd_loss(s, t, distance_weight=distance_weight, angle_weight=angle_weight)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    _, named = rkd_loss(s, t, return_terms=True)
    terms = named["distance"], named["angle"]
    assert terms[0].item() == pytest.approx(distance, rel=1e-10) and terms[1].item() == pytest.approx(angle, rel=1e-10)
    single = rkd_loss(s.float(), t.float(), distance_weight=distance_weight, angle_weight=angle_weight)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _embeds(4, 5, 6, 2.0, seed=3)
    s, t = s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, t, distance_weight=25.0, angle_weight=50.0), (s,))
    rkd_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_embeddings_give_zero():
    s, _ = _embeds(8, 10, 10, 3.0, seed=0)
    assert rkd_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-15)


def test_tiny_batches_are_finite():
    # Two samples have one distance and trivially matching angles: 0. One sample has no pair: 0, not NaN.
    s, t = _embeds(2, 4, 6, 1.0, seed=1)
    assert rkd_loss(s, t).item() == pytest.approx(0.0, abs=1e-12)
    one = s[:1].clone().requires_grad_()
    value = rkd_loss(one, t[:1])
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(one.grad).all()


def test_mixed_precision_autocast_does_not_lower_the_precision():
    s, t = (x.float() for x in _embeds(16, 32, 64, 1.0, seed=5))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = rkd_loss(s, t)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(rkd_loss(s, t).item(), rel=1e-6)


def test_half_precision_inputs_compute_in_float32():
    s, t = _embeds(8, 10, 12, 1.0, seed=5)
    s, t = s.bfloat16(), t.bfloat16()
    out = rkd_loss(s, t)
    assert out.dtype == torch.float32
    expected, _, _ = reference_rkd(s.double().numpy(), t.double().numpy(), 25.0, 50.0)
    assert out.item() == pytest.approx(expected, rel=1e-4)


def test_module_output_gradients_and_hyperparameters():
    g = torch.Generator().manual_seed(7)
    s = [torch.randn(6, 8, 8, 8, generator=g).relu().requires_grad_() for _ in range(2)]
    t = [torch.randn(6, 16, 4, 4, generator=g).relu().requires_grad_() for _ in range(2)]
    loss = create_loss("rkd")
    assert loss.needs.hidden_states and loss.paper.arxiv_id == "1904.05068"
    out = loss(_output(s), _output(t), DistillBatch())
    assert set(out) == {"loss", "rkd", "distance", "angle"}
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    # mdistiller's pooled_feat, FEAT_WEIGHT 1, and its internal 25/50 weights.
    expected = rkd_loss(s[-1].mean(dim=(2, 3)), t[-1].mean(dim=(2, 3)))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["rkd"].item() == pytest.approx(25 * out["distance"].item() + 50 * out["angle"].item(), rel=1e-6)
    out["loss"].backward()
    assert s[0].grad is None and torch.isfinite(s[1].grad).all() and all(m.grad is None for m in t)
    assert loss.hparams() == {"distance_weight": 25.0, "angle_weight": 50.0, "feat_weight": 1.0}
    other = create_loss("rkd", angle_weight=0.0)(_output(s), _output(t), DistillBatch())
    assert other["loss"].item() == pytest.approx(25 * out["distance"].item(), rel=1e-6)
    assert not math.isclose(other["loss"].item(), out["loss"].item(), rel_tol=1e-3)
    scaled = create_loss("rkd", feat_weight=3.0)(_output(s), _output(t), DistillBatch())["loss"]
    assert scaled.item() == pytest.approx(3.0 * out["loss"].item(), rel=1e-6)


def test_depends_on_batch_composition():
    # Batch-level by design: distances and angles relate the samples of the micro-batch.
    s, t = _embeds(8, 6, 9, 1.0, seed=9)
    halves = (rkd_loss(s[:4], t[:4]).item() + rkd_loss(s[4:], t[4:]).item()) / 2
    assert not math.isclose(rkd_loss(s, t).item(), halves, rel_tol=1e-3)


def test_module_on_tiny_resnet_pair(student, teacher):
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    student_out = student(pixel_values=pixels, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(pixel_values=pixels, output_hidden_states=True)
    # With the (2, 3, 32, 32) batch the loss is exactly 0 (see test_tiny_batches_are_finite); both must run.
    with torch.no_grad():
        small_teacher_out = teacher(pixel_values=pixels[:2], output_hidden_states=True)
    small_student_out = student(pixel_values=pixels[:2], output_hidden_states=True)
    small = create_loss("rkd")(small_student_out, small_teacher_out, DistillBatch())
    assert math.isfinite(small["loss"].item())
    out = create_loss("rkd")(student_out, teacher_out, DistillBatch())
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    out["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["distance_weight", "angle_weight", "feat_weight"])
def test_rejects_negative_weights(name):
    with pytest.raises(ValueError, match=name):
        create_loss("rkd", **{name: -1.0})
