import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, kdsvd_loss

from .feature_inputs import as_numpy as _numpy
from .feature_inputs import output_with as _output
from .feature_inputs import seeded_maps as _maps
from .feature_reference import kdsvd as reference_kdsvd


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.kdsvd (float64 NumPy loops, np.linalg.svd) on these seeded signed maps, k=1.
    s = _maps([(4, 8, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2)], seed=103)
    t = _maps([(4, 16, 8, 8), (4, 32, 4, 4), (4, 64, 2, 2)], seed=104)
    assert kdsvd_loss(s, t).item() == pytest.approx(0.12649422747869388, rel=1e-10)


@pytest.mark.parametrize(
    "student_shapes,teacher_shapes,scale,k,relu",
    [
        ([(4, 3, 8, 8), (4, 6, 4, 4)], [(4, 5, 8, 8), (4, 8, 4, 4)], 1.0, 1, True),
        # Heights and channels may differ, widths must match; C·H < W at the second stage (rank-deficient view).
        ([(3, 3, 4, 5), (3, 2, 2, 5), (3, 2, 2, 3)], [(3, 4, 2, 5), (3, 4, 2, 5), (3, 4, 2, 3)], 5.0, 2, False),
        ([(2, 4, 6, 6), (2, 8, 3, 3)], [(2, 3, 6, 6), (2, 4, 3, 3)], 0.1, 1, False),
        ([(2, 4, 6, 6), (2, 8, 3, 3)], [(2, 3, 6, 6), (2, 4, 3, 3)], 1.0, 3, False),
    ],
)
def test_matches_reference(student_shapes, teacher_shapes, scale, k, relu):
    s = _maps(student_shapes, seed=len(student_shapes) + k, scale=scale, relu=relu)
    t = _maps(teacher_shapes, seed=17 + k, scale=scale, relu=relu)
    expected = reference_kdsvd(_numpy(s), _numpy(t), k)
    assert kdsvd_loss(s, t, k=k).item() == pytest.approx(expected, rel=1e-9)
    single = kdsvd_loss([m.float() for m in s], [m.float() for m in t], k=k)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_gradient_matches_finite_differences_and_skips_teacher():
    # Differentiating an SVD is ill-conditioned near repeated singular values; these seeded inputs are well
    # separated. The second case has C·H < W, where the null-space term of the gradient matters.
    for shapes, teacher_shapes in [
        ([(2, 3, 4, 4), (2, 4, 2, 2)], [(2, 5, 4, 4), (2, 6, 2, 2)]),
        ([(2, 1, 2, 6), (2, 1, 3, 6)], [(2, 1, 2, 6), (2, 2, 2, 6)]),
    ]:
        s = [m.requires_grad_() for m in _maps(shapes, seed=3)]
        t = [m.requires_grad_() for m in _maps(teacher_shapes, seed=4)]
        assert torch.autograd.gradcheck(lambda a, b, t=t: kdsvd_loss([a, b], t, k=1), tuple(s))
        kdsvd_loss(s, t).backward()
        assert all(m.grad is None for m in t) and all(torch.isfinite(m.grad).all() for m in s)


def test_zero_columns_keep_gradients_finite():
    # Post-ReLU maps with all-zero columns have repeated zero singular values, which make torch.linalg.svd's own
    # backward NaN; the kept vectors' gradient does not involve those pairs.
    s = _maps([(2, 8, 4, 6), (2, 8, 2, 6)], seed=5, relu=True)
    t = [m * 1.1 + 0.1 for m in _maps([(2, 8, 4, 6), (2, 8, 2, 6)], seed=6, relu=True)]
    s[0][..., 4:] = 0
    s[1][..., 3:] = 0
    s = [m.requires_grad_() for m in s]
    kdsvd_loss(s, t).backward()
    assert all(torch.isfinite(m.grad).all() for m in s)


def test_identical_features_give_zero():
    s = _maps([(4, 8, 8, 8), (4, 16, 4, 4)], seed=0)
    assert kdsvd_loss(s, [m.clone() for m in s]).item() == pytest.approx(0.0, abs=1e-12)


def test_mixed_precision_autocast_does_not_lower_the_precision():
    s = [m.float().requires_grad_() for m in _maps([(4, 3, 4, 4), (4, 3, 2, 2)], seed=5)]
    t = [m.float() for m in _maps([(4, 6, 4, 4), (4, 6, 2, 2)], seed=6)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = kdsvd_loss(s, t)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(kdsvd_loss(s, t).item(), rel=1e-6)


def test_half_precision_inputs_compute_in_float32():
    s = [m.bfloat16() for m in _maps([(4, 3, 4, 4), (4, 3, 2, 2)], seed=5, relu=True)]
    t = [m.bfloat16() for m in _maps([(4, 6, 4, 4), (4, 6, 2, 2)], seed=6, relu=True)]
    out = kdsvd_loss(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_kdsvd(_numpy(s), _numpy(t), 1), rel=1e-3, abs=1e-6)


def test_module_output_gradients_and_hyperparameters():
    shapes = [(4, 8, 8, 8), (4, 8, 8, 8), (4, 16, 4, 4)]
    s = [m.float().requires_grad_() for m in _maps(shapes, seed=7)]
    t = [m.float().requires_grad_() for m in _maps([(4, 8, 8, 8), (4, 16, 8, 8), (4, 32, 4, 4)], seed=8)]
    loss = create_loss("kdsvd")
    assert loss.needs.hidden_states and loss.paper.arxiv_id == "1807.06819"
    out = loss(_output(s), _output(t), DistillBatch())
    assert set(out) == {"loss", "kdsvd"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    # Default stages "1:" skip the stem (mdistiller's feats[1:]); K 1, FEAT_WEIGHT 1.
    assert out["loss"].item() == pytest.approx(kdsvd_loss(s[1:], t[1:]).item(), rel=1e-5)
    out["loss"].backward()
    assert s[0].grad is None and all(torch.isfinite(m.grad).all() for m in s[1:])
    assert all(m.grad is None for m in t)
    assert loss.hparams() == {"k": 1, "stages": "1:", "feat_weight": 1.0}
    other = create_loss("kdsvd", k=2)(_output(s), _output(t), DistillBatch())["kdsvd"]
    assert not math.isclose(other.item(), out["kdsvd"].item(), rel_tol=1e-3)
    scaled = create_loss("kdsvd", feat_weight=3.0)(_output(s), _output(t), DistillBatch())["loss"]
    assert scaled.item() == pytest.approx(3.0 * out["kdsvd"].item(), rel=1e-5)


def test_module_on_tiny_resnet_pair(student, teacher):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    student_out = student(pixel_values=pixels, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(pixel_values=pixels, output_hidden_states=True)
    out = create_loss("kdsvd")(student_out, teacher_out, DistillBatch())
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    out["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": True}, "k"),
        ({"feat_weight": -1.0}, "feat_weight"),
        ({"stages": {}}, "stages"),
    ],
)
def test_rejects_bad_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_loss("kdsvd", **kwargs)


def test_rejects_unusable_stage_choices():
    s = _maps([(2, 3, 4, 4), (2, 3, 2, 2)], seed=1)
    with pytest.raises(ValueError, match="stages"):
        kdsvd_loss(s, s[:1])
    with pytest.raises(ValueError, match="at least two"):
        kdsvd_loss(s[:1], s[:1])
    # Different widths: the larger map is average-pooled to the smaller size first.
    t = _maps([(2, 3, 4, 4), (2, 3, 2, 3)], seed=2)
    pooled = [s[0], torch.nn.functional.adaptive_avg_pool2d(s[1], (2, 2))]
    cropped = [t[0], torch.nn.functional.adaptive_avg_pool2d(t[1], (2, 2))]
    assert kdsvd_loss(s, t).item() == pytest.approx(kdsvd_loss(pooled, cropped).item(), rel=1e-12)
