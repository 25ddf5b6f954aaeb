import math

import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import DistillBatch, LossContext, create_loss, vid_loss
from hfkd.models.features import probe_feature_shapes

from ..testing_utils import tiny_resnet
from .trainable_reference import vid as reference_vid


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(*shape, generator=g, dtype=torch.float64)
    teacher = torch.randn(*shape, generator=g, dtype=torch.float64)
    variance = torch.rand(shape[1], generator=g, dtype=torch.float64) * 4 + 0.1
    return mean, teacher, variance


def _tiny_pair(batch=4):
    student, teacher = tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    context = LossContext(
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
    )
    outputs = [m(pixel_values=pixels, output_hidden_states=True) for m in (student, teacher)]
    return student, teacher, context, *outputs


def test_pinned_value_from_reference_code():
    mean, teacher, variance = _inputs((4, 8, 4, 4), seed=12)
    assert vid_loss(mean, teacher, variance).item() == pytest.approx(1.2033309871753084, rel=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 1, 2, 3), (3, 6, 1, 1)])
def test_matches_paper_equation(shape):
    mean, teacher, variance = _inputs(shape, seed=sum(shape))
    expected = reference_vid(mean.numpy(), teacher.numpy(), variance.numpy())
    assert vid_loss(mean, teacher, variance).item() == pytest.approx(expected, rel=1e-12)
    assert vid_loss(mean.float(), teacher.float(), variance.float()).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    mean, teacher, variance = _inputs((2, 3, 2, 2), seed=4)
    mean, teacher, variance = mean.requires_grad_(), teacher.requires_grad_(), variance.requires_grad_()
    assert torch.autograd.gradcheck(lambda m, v: vid_loss(m, teacher, v), (mean, variance))
    vid_loss(mean, teacher, variance).backward()
    assert teacher.grad is None


def test_exact_mean_leaves_half_the_mean_log_variance():
    _, teacher, variance = _inputs((3, 4, 2, 2), seed=5)
    expected = 0.5 * variance.log().mean().item()
    assert vid_loss(teacher.clone(), teacher, variance).item() == pytest.approx(expected, rel=1e-12)


def test_variance_stays_at_its_initial_value_unless_learned():
    *_, context, student_out, teacher_out = _tiny_pair()
    fixed = create_loss("vid", context=context)
    assert len(fixed.regressors) == 2 and not any("log_scale" in name for name, _ in fixed.named_parameters())
    for variance in fixed.variances():
        torch.testing.assert_close(variance, torch.full_like(variance, 5.0))
    learned = create_loss("vid", learn_variance=True, init_pred_var=2.0, context=context)
    torch.testing.assert_close(learned.variances()[0], torch.full((16,), 2.0))
    learned(student_out, teacher_out, DistillBatch())["loss"].backward()
    assert learned.log_scale_0.requires_grad and learned.log_scale_0.grad is not None
    # Same keys either way, so adapters saved in one mode load in the other.
    assert set(fixed.state_dict()) == set(learned.state_dict())


def test_regressor_shapes_and_pooling_follow_mdistiller():
    context = LossContext(student_feature_shapes=[(3, 8, 8), (6, 8, 8)], teacher_feature_shapes=[(3, 8, 8), (5, 4, 4)])
    loss = create_loss("vid", context=context)
    widths = [(c.in_channels, c.out_channels) for c in loss.regressors[0] if isinstance(c, torch.nn.Conv2d)]
    assert widths == [(6, 5), (5, 5), (5, 5)]
    assert all(c.bias is None for c in loss.regressors[0] if isinstance(c, torch.nn.Conv2d))
    g = torch.Generator().manual_seed(0)
    student = {"hidden_states": (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 6, 8, 8, generator=g))}
    teacher = {"hidden_states": (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g))}
    got = loss(student, teacher, DistillBatch())["vid"]
    # The larger student map is pooled to the teacher's size before the regressor.
    mean = loss.regressors[0](F.adaptive_avg_pool2d(student["hidden_states"][1], (4, 4)))
    expected = vid_loss(mean, teacher["hidden_states"][1], torch.full((5,), 5.0))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_module_on_a_tiny_pair_trains_student_and_regressors_only():
    student, teacher, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("vid", context=context)
    out = loss(student_out, teacher_out, DistillBatch())
    assert set(out) == {"loss", "vid"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hyperparameters_change_the_value_and_bad_values_raise():
    *_, context, student_out, teacher_out = _tiny_pair()
    values = []
    for kwargs in ({}, {"init_pred_var": 1.0}, {"feat_weight": 2.0}):
        torch.manual_seed(0)
        values.append(create_loss("vid", context=context, **kwargs)(student_out, teacher_out, DistillBatch())["loss"])
    assert not math.isclose(values[0].item(), values[1].item())
    assert values[2].item() == pytest.approx(2 * values[0].item(), rel=1e-6)
    with pytest.raises(ValueError, match="init_pred_var"):
        create_loss("vid", init_pred_var=0.0, context=context)
    with pytest.raises(ValueError, match="needs feature shapes"):
        create_loss("vid", context=LossContext())
