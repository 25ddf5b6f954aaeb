import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, nst_loss

from .feature_inputs import as_numpy as _numpy
from .feature_inputs import output_with as _output
from .feature_inputs import seeded_maps as _maps
from .feature_reference import nst as reference_nst


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.nst (float64 NumPy loops) on these seeded post-ReLU maps.
    s = _maps([(4, 8, 8, 8), (4, 16, 4, 4)], seed=103, relu=True)
    t = _maps([(4, 16, 8, 8), (4, 32, 4, 4)], seed=104, relu=True)
    assert nst_loss(s, t).item() == pytest.approx(0.24444653668654548, rel=1e-12)


@pytest.mark.parametrize(
    "student_shapes,teacher_shapes,scale,relu",
    [
        ([(4, 3, 8, 8)], [(4, 5, 8, 8)], 1.0, True),
        # Student larger than the teacher at the first stage: pooled down to the teacher's size.
        ([(3, 4, 8, 8), (3, 6, 4, 4)], [(3, 2, 4, 4), (3, 8, 4, 4)], 5.0, True),
        # Teacher larger and non-square, signed features.
        ([(2, 4, 3, 3)], [(2, 3, 6, 7)], 0.1, False),
    ],
)
def test_matches_paper_equation(student_shapes, teacher_shapes, scale, relu):
    s = _maps(student_shapes, seed=len(student_shapes), scale=scale, relu=relu)
    t = _maps(teacher_shapes, seed=11, scale=scale, relu=relu)
    expected = reference_nst(_numpy(s), _numpy(t))
    assert nst_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    single = nst_loss([m.float() for m in s], [m.float() for m in t])
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s = [m.requires_grad_() for m in _maps([(2, 3, 4, 4), (2, 2, 2, 2)], seed=3)]
    t = [m.requires_grad_() for m in _maps([(2, 4, 2, 2), (2, 5, 2, 2)], seed=4)]
    assert torch.autograd.gradcheck(lambda a, b: nst_loss([a, b], t), tuple(s))
    nst_loss(s, t).backward()
    assert all(m.grad is None for m in t) and all(torch.isfinite(m.grad).all() for m in s)


def test_identical_features_give_zero():
    s = _maps([(4, 8, 8, 8), (4, 16, 4, 4)], seed=0, relu=True)
    assert nst_loss(s, [m.clone() for m in s]).item() == pytest.approx(0.0, abs=1e-12)


def test_mixed_precision_autocast_does_not_lower_the_precision():
    s = [m.float() for m in _maps([(4, 3, 4, 4)], seed=5, relu=True)]
    t = [m.float() for m in _maps([(4, 6, 4, 4)], seed=6, relu=True)]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = nst_loss(s, t)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(nst_loss(s, t).item(), rel=1e-6)


def test_half_precision_inputs_compute_in_float32():
    s = [m.bfloat16() for m in _maps([(4, 3, 4, 4)], seed=5, relu=True)]
    t = [m.bfloat16() for m in _maps([(4, 6, 4, 4)], seed=6, relu=True)]
    out = nst_loss(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_nst(_numpy(s), _numpy(t)), rel=1e-5)


def test_module_output_gradients_and_hyperparameters():
    s = [m.float().requires_grad_() for m in _maps([(4, 8, 8, 8), (4, 8, 8, 8), (4, 16, 4, 4)], seed=7, relu=True)]
    t = [m.float().requires_grad_() for m in _maps([(4, 8, 8, 8), (4, 16, 8, 8), (4, 32, 4, 4)], seed=8, relu=True)]
    loss = create_loss("nst")
    assert loss.needs.hidden_states and loss.paper.arxiv_id == "1707.01219"
    out = loss(_output(s), _output(t), DistillBatch())
    assert set(out) == {"loss", "nst"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    # Default stages "1:" skip the stem (mdistiller's feats[1:]); FEAT_WEIGHT 50.
    assert out["nst"].item() == pytest.approx(nst_loss(s[1:], t[1:]).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(50.0 * out["nst"].item(), rel=1e-6)
    out["loss"].backward()
    assert s[0].grad is None and all(torch.isfinite(m.grad).all() for m in s[1:])
    assert all(m.grad is None for m in t)
    assert loss.hparams() == {"stages": "1:", "feat_weight": 50.0}
    other = create_loss("nst", stages=[-1])(_output(s), _output(t), DistillBatch())["nst"]
    assert not math.isclose(other.item(), out["nst"].item(), rel_tol=1e-3)
    weighted = create_loss("nst", feat_weight=2.0)(_output(s), _output(t), DistillBatch())["loss"]
    assert weighted.item() == pytest.approx(2.0 * out["nst"].item(), rel=1e-6)


def test_module_on_tiny_resnet_pair(student, teacher):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    student_out = student(pixel_values=pixels, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(pixel_values=pixels, output_hidden_states=True)
    out = create_loss("nst")(student_out, teacher_out, DistillBatch())
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    out["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kwargs,match", [({"feat_weight": -1.0}, "feat_weight"), ({"stages": "a:b"}, "stages")])
def test_rejects_bad_kwargs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_loss("nst", **kwargs)


def test_rejects_stage_lists_of_different_lengths():
    s = _maps([(2, 3, 4, 4), (2, 3, 2, 2)], seed=1)
    with pytest.raises(ValueError, match="stages"):
        nst_loss(s, s[:1])
