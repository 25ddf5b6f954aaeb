import math

import pytest
import torch

from hfkd.losses import DistillBatch, LossContext, create_loss, hcl_loss
from hfkd.models.features import probe_feature_shapes

from ..testing_utils import tiny_resnet
from .trainable_reference import hcl as reference_hcl

SHAPES = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1), (2, 3, 3, 5)]


def _maps(seed, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    students = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    return students, [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


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
    students, teachers = _maps(seed=15)
    assert hcl_loss(students, teachers).item() == pytest.approx(9.377542052081465, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_paper_equation(seed):
    students, teachers = _maps(seed)
    expected = reference_hcl([s.numpy() for s in students], [t.numpy() for t in teachers])
    assert hcl_loss(students, teachers).item() == pytest.approx(expected, rel=1e-12)
    as_float = hcl_loss([s.float() for s in students], [t.float() for t in teachers])
    assert as_float.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    students, teachers = _maps(2, [(1, 2, 4, 4), (2, 1, 2, 2)])
    students = [s.requires_grad_() for s in students]
    teachers = [t.requires_grad_() for t in teachers]
    assert torch.autograd.gradcheck(lambda a, b: hcl_loss([a, b], teachers), tuple(students))
    hcl_loss(students, teachers).backward()
    assert all(t.grad is None for t in teachers)


def test_identical_maps_give_zero():
    students, _ = _maps(seed=3)
    assert hcl_loss(students, [s.clone() for s in students]).item() == 0.0


def test_abfs_are_built_from_the_probed_shapes_as_mdistiller_does():
    _, _, context, _, _ = _tiny_pair()
    loss = create_loss("reviewkd", context=context)
    # Deepest first: the pooled last stage (no fusion), then stages 2 and 1.
    assert [abf.att_conv is None for abf in loss.abfs] == [True, False, False]
    assert [abf.conv1[0].in_channels for abf in loss.abfs] == [16, 16, 8]
    assert [abf.conv2[0].out_channels for abf in loss.abfs] == [32, 32, 16]
    assert {abf.conv1[0].out_channels for abf in loss.abfs} == {16}
    assert loss.out_sizes == [(8, 8), (4, 4), (1, 1)]
    shapes = {"student_feature_shapes": [(8, 8, 8), (1024, 4, 4)], "teacher_feature_shapes": [(8, 8, 8), (64, 4, 4)]}
    wide = LossContext(**shapes)
    assert create_loss("reviewkd", context=wide).abfs[0].conv1[0].out_channels == 512
    assert create_loss("reviewkd", max_mid_channels=64, context=wide).abfs[0].conv1[0].out_channels == 64


def test_student_maps_are_resized_to_the_teachers():
    context = LossContext(
        student_feature_shapes=[(4, 8, 8), (6, 8, 8), (8, 4, 4)],
        teacher_feature_shapes=[(4, 16, 16), (5, 16, 16), (7, 8, 8)],
    )
    g = torch.Generator().manual_seed(0)
    student = {"hidden_states": tuple(torch.randn(3, *s, generator=g) for s in context.student_feature_shapes)}
    teacher = {"hidden_states": tuple(torch.randn(3, *s, generator=g) for s in context.teacher_feature_shapes)}
    out = create_loss("reviewkd", context=context)(student, teacher, DistillBatch(epoch=30.0))
    assert math.isfinite(out["loss"].item()) and out["warmup"].item() == 1.0


def test_warmup_follows_the_one_based_epoch():
    _, _, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("reviewkd", context=context)
    values = {}
    for epoch in (0.0, 0.99, 1.0, 19.0, 25.0):
        torch.manual_seed(0)
        out = loss(student_out, teacher_out, DistillBatch(epoch=epoch))
        values[epoch] = out
        assert out["loss"].item() == pytest.approx(out["warmup"].item() * out["reviewkd"].item(), rel=1e-6)
    assert [values[e]["warmup"].item() for e in values] == pytest.approx([0.05, 0.05, 0.1, 1.0, 1.0])
    assert create_loss("reviewkd", warmup_epochs=0, context=context).warmup_factor(0.0) == 1.0


def test_teacher_pre_activations_are_used_when_reported():
    _, _, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("reviewkd", context=context)
    plain = loss(student_out, teacher_out, DistillBatch())["reviewkd"]
    shifted = {**teacher_out, "preact_hidden_states": tuple(h - 1.0 for h in teacher_out.hidden_states)}
    assert not math.isclose(loss(student_out, shifted, DistillBatch())["reviewkd"].item(), plain.item())
    with pytest.raises(ValueError, match="preact_hidden_states"):
        create_loss("reviewkd", student_preact=True, context=context)(student_out, teacher_out, DistillBatch())


def test_module_on_a_tiny_pair_trains_student_and_abfs_only():
    student, teacher, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("reviewkd", context=context)
    out = loss(student_out, teacher_out, DistillBatch(epoch=100.0))
    assert set(out) == {"loss", "reviewkd", "warmup"} and all(v.ndim == 0 for v in out.values())
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hyperparameters_change_the_value_and_bad_values_raise():
    _, _, context, student_out, teacher_out = _tiny_pair()
    values = []
    for kwargs in ({}, {"feat_weight": 5.0}, {"warmup_epochs": 1.0}):
        torch.manual_seed(0)
        values.append(create_loss("reviewkd", context=context, **kwargs)(student_out, teacher_out, DistillBatch()))
    assert values[1]["loss"].item() == pytest.approx(5 * values[0]["loss"].item(), rel=1e-6)
    assert values[2]["loss"].item() == pytest.approx(20 * values[0]["loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="warmup_epochs"):
        create_loss("reviewkd", warmup_epochs=-1.0, context=context)
    with pytest.raises(ValueError, match="needs feature shapes"):
        create_loss("reviewkd", context=LossContext())
