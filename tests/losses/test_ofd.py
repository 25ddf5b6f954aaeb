import dataclasses
import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, LossContext, create_loss, ofd_loss, ofd_margin
from hfkd.models.features import probe_feature_shapes

from ..testing_utils import tiny_resnet
from .trainable_reference import ofd as reference_ofd
from .trainable_reference import ofd_margin as reference_margin


def _with_preacts(model, pixels):
    """The model's output plus `preact_hidden_states`, read at each stage's last ReLU (test-only wiring)."""
    captured = []
    stages = model.resnet.encoder.stages
    hooks = [s.layers[-1].activation.register_forward_pre_hook(lambda m, a: captured.append(a[0])) for s in stages]
    try:
        out = model(pixel_values=pixels, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    preacts = (out.hidden_states[0], *captured)
    return {"logits": out.logits, "hidden_states": out.hidden_states, "preact_hidden_states": preacts}


def _bn_stats(model):
    """(β, γ) of the BN closing each stage's last residual branch: mdistiller's `get_bn_before_relu()`."""
    norms = [s.layers[-1].layer[-1].normalization for s in model.resnet.encoder.stages]
    return [(bn.bias.detach().clone(), bn.weight.detach().clone()) for bn in norms]


def _tiny_pair(batch=4):
    student, teacher = tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for bn in (s.layers[-1].layer[-1].normalization for s in teacher.resnet.encoder.stages):
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.2)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g))
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    context = LossContext(
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
        teacher_bn_stats=_bn_stats(teacher),
    )
    return student, teacher, context, _with_preacts(student, pixels), _with_preacts(teacher, pixels)


def _stages(seed, shapes=(((2, 3, 4, 4), (2, 3, 8, 8)), ((2, 5, 2, 2), (2, 5, 2, 2)))):
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(*s, generator=g, dtype=torch.float64) for s, _ in shapes]
    teachers = [torch.randn(*t, generator=g, dtype=torch.float64) for _, t in shapes]
    margins = [-torch.rand(s[1], generator=g, dtype=torch.float64) - 0.1 for s, _ in shapes]
    return students, teachers, margins


def test_margin_matches_the_truncated_normal_mean():
    mean = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5, 4.0, 2.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.5, -0.7, 2.0, 0.4, 1.0, 1.0], dtype=torch.float64)
    expected = reference_margin(mean.numpy(), std.numpy())
    np.testing.assert_allclose(ofd_margin(mean, std).numpy(), expected, rtol=1e-12)
    # Φ(−4) and Φ(−3.75) fall below 0.001: the margin is −3σ there.
    assert ofd_margin(mean, std)[4].item() == pytest.approx(-1.2) and ofd_margin(mean, std)[5].item() == -3.0
    assert (ofd_margin(mean, std) < 0).all()


def test_pinned_value_from_reference_code():
    students, teachers, margins = _stages(seed=13)
    assert ofd_loss(students, teachers, margins).item() == pytest.approx(50.79537718589664, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_paper_equation(seed):
    students, teachers, margins = _stages(seed)
    expected = reference_ofd(*([x.numpy() for x in group] for group in (students, teachers, margins)))
    assert ofd_loss(students, teachers, margins).item() == pytest.approx(expected, rel=1e-12)
    as_float = ofd_loss([s.float() for s in students], [t.float() for t in teachers], [m.float() for m in margins])
    assert as_float.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    students, teachers, margins = _stages(4, (((1, 2, 2, 2), (1, 2, 4, 4)), ((2, 3, 1, 1), (2, 3, 1, 1))))
    students = [s.requires_grad_() for s in students]
    teachers = [t.requires_grad_() for t in teachers]
    assert torch.autograd.gradcheck(lambda a, b: ofd_loss([a, b], teachers, margins), tuple(students))
    ofd_loss(students, teachers, margins).backward()
    assert all(t.grad is None for t in teachers)


def test_zero_where_the_student_is_below_a_non_positive_target():
    students, teachers, margins = _stages(seed=5)
    teachers = [-t.abs() for t in teachers]
    pooled = [torch.nn.functional.adaptive_avg_pool2d(t, s.shape[-2:]) for s, t in zip(students, teachers)]
    below = [torch.minimum(p, m.view(1, -1, 1, 1)) - s.abs() for s, p, m in zip(students, pooled, margins)]
    assert ofd_loss(below, teachers, margins).item() == 0.0
    # A positive teacher value is always matched, from below too.
    teachers[1][0, 0, 0, 0] = 1.0
    assert ofd_loss(below, teachers, margins).item() > 0


def test_needs_pre_activations_and_teacher_bn_statistics():
    _, _, context, student_out, teacher_out = _tiny_pair()
    hint = r"pre-activation features.*BN statistics.*'at', 'fitnet' or 'reviewkd'"
    with pytest.raises(ValueError, match=hint):
        create_loss("ofd", context=dataclasses.replace(context, teacher_bn_stats=None))
    loss = create_loss("ofd", context=context)
    bare = {"hidden_states": student_out["hidden_states"]}
    with pytest.raises(ValueError, match=hint):
        loss(bare, teacher_out, DistillBatch())
    with pytest.raises(ValueError, match="needs feature shapes"):
        create_loss("ofd", context=LossContext(teacher_bn_stats=context.teacher_bn_stats))


def test_bn_statistics_per_map_or_per_stage_give_the_same_margins():
    *_, context, _, _ = _tiny_pair()
    per_stage = create_loss("ofd", context=context)
    stem = (torch.zeros(8), torch.ones(8))
    per_map = LossContext(
        student_feature_shapes=context.student_feature_shapes,
        teacher_feature_shapes=context.teacher_feature_shapes,
        teacher_bn_stats=[stem, *context.teacher_bn_stats],
    )
    from_maps = create_loss("ofd", context=per_map)
    for i in range(2):
        torch.testing.assert_close(from_maps.get_buffer(f"margin_{i}"), per_stage.get_buffer(f"margin_{i}"))
    mean, std = context.teacher_bn_stats[1]
    torch.testing.assert_close(per_stage.margin_1, ofd_margin(mean, std).float())


def test_module_on_a_tiny_pair_trains_student_and_connectors_only():
    student, teacher, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("ofd", context=context)
    conv, bn = loss.connectors[1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (16, 32, (1, 1), None)
    assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())
    out = loss(student_out, teacher_out, DistillBatch())
    assert set(out) == {"loss", "ofd"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    assert out["loss"].item() == pytest.approx(1e-3 * out["ofd"].item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hyperparameters_change_the_value():
    *_, context, student_out, teacher_out = _tiny_pair()
    values = []
    for kwargs in ({}, {"connector_kernel_size": 3}, {"feat_weight": 1e-4}):
        torch.manual_seed(0)
        values.append(create_loss("ofd", context=context, **kwargs)(student_out, teacher_out, DistillBatch())["loss"])
    assert not math.isclose(values[0].item(), values[1].item())
    assert values[2].item() == pytest.approx(values[0].item() / 10, rel=1e-6)
    with pytest.raises(ValueError, match="connector_kernel_size"):
        create_loss("ofd", connector_kernel_size=2, context=context)
