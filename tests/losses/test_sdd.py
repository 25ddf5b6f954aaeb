import math

import numpy as np
import pytest
import torch

from hfkd.losses import DistillBatch, LossContext, create_loss, kd_loss
from hfkd.losses._feature_maps import select_features
from hfkd.losses.sdd import region_logits, sdd_dkd_loss, sdd_kd_loss
from hfkd.models.features import classifier_head

from ..testing_utils import tiny_resnet
from .reference import dkd, kl, softmax


def reference_sdd(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Wei & Bai's SD-KD from the equations: per (region, sample) KD, weight 2 where the teacher's local and global
    predictions disagree in correctness, normalised by N·B."""
    batch, _, regions = student.shape
    total = 0.0
    for n in range(regions):
        for b in range(batch):
            row = temperature**2 * kl(softmax(teacher[b, :, n] / temperature), softmax(student[b, :, n] / temperature))
            local_right = teacher[b, :, n].argmax() == labels[b]
            global_right = teacher[b, :, 0].argmax() == labels[b]
            weight = 2.0 if n > 0 and local_right != global_right else 1.0
            total += weight * row
    return total / (regions * batch)


def reference_sd_dkd(student, teacher, labels, alpha: float, beta: float, temperature: float) -> float:
    """SD-DKD from the equations: per (region, sample) α·TCKD + β·NCKD (the DKD paper's, with T²), the same 1-or-2
    weights as SD-KD, normalised by N·B. Each row's DKD comes from the one-sample DKD reference."""
    batch, _, regions = student.shape
    total = 0.0
    for n in range(regions):
        for b in range(batch):
            row, _, _ = dkd(
                student[b : b + 1, :, n], teacher[b : b + 1, :, n], labels[b : b + 1], alpha, beta, temperature
            )
            local_right = teacher[b, :, n].argmax() == labels[b]
            global_right = teacher[b, :, 0].argmax() == labels[b]
            total += (2.0 if n > 0 and local_right != global_right else 1.0) * row
    return total / (regions * batch)


def _inputs(b=6, c=5, n=21, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, n, generator=g, dtype=torch.float64) * scale
    t = torch.randn(b, c, n, generator=g, dtype=torch.float64) * scale
    return s, t, torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("b,c,n,scale,temperature", [(6, 5, 21, 2.0, 4.0), (4, 10, 5, 1.0, 1.0), (8, 3, 1, 3.0, 2.0)])
def test_matches_the_equations(b, c, n, scale, temperature):
    s, t, y = _inputs(b, c, n, scale, seed=b + n)
    expected = reference_sdd(s.numpy(), t.numpy(), y.numpy(), temperature)
    assert sdd_kd_loss(s, t, y, temperature=temperature).item() == pytest.approx(expected, rel=1e-10)


def test_pinned_value_and_single_region_is_kd():
    s, t, y = _inputs(seed=103)
    # From reference_sdd on these inputs.
    assert sdd_kd_loss(s, t, y).item() == pytest.approx(reference_sdd(s.numpy(), t.numpy(), y.numpy(), 4.0), rel=1e-12)
    one = sdd_kd_loss(s[..., :1], t[..., :1], y)
    assert one.item() == pytest.approx(kd_loss(s[..., 0], t[..., 0]).item(), rel=1e-12)


def test_gradients_reach_the_student_only_and_identical_is_zero():
    s, t, y = _inputs(4, 3, 5, seed=1)
    s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sdd_kd_loss(x, t, y), (s,))
    sdd_kd_loss(s, t, y).backward()
    assert t.grad is None
    assert sdd_kd_loss(s.detach(), s.detach().clone(), y).item() == pytest.approx(0.0, abs=1e-12)


def test_regions_go_through_the_models_own_head():
    model = tiny_resnet(5, seed=1).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
        (last,) = select_features(out, [-1])
        regions = region_logits(last, classifier_head(model))
    assert regions.shape == (2, 5, 21)
    torch.testing.assert_close(regions[..., 0], out.logits)  # the global region is the model's own prediction
    pooled = torch.nn.functional.adaptive_avg_pool2d(last, 2)[:, :, 1, 0]  # region (row 1, column 0) of the 2×2 grid
    torch.testing.assert_close(regions[..., 1 + 2], model.classifier(pooled[..., None, None]))


def real_pair_outputs():
    """A tiny ResNet pair's outputs on 4 images, with the loss context carrying their heads."""
    student, teacher = tiny_resnet(5, seed=1), tiny_resnet(5, wide=True, seed=2).eval()
    context = LossContext(num_classes=5, student_head=classifier_head(student), teacher_head=classifier_head(teacher))
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    s_out = student(pixel_values=pixels, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(pixel_values=pixels, output_hidden_states=True)
    return student, teacher, context, labels, s_out, t_out


def test_module_with_a_real_pair_and_hyperparameters():
    student, teacher, context, labels, s_out, t_out = real_pair_outputs()
    out = create_loss("sdd", context=context)(s_out, t_out, DistillBatch(labels=labels))
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert student.classifier[1].weight.grad is not None and all(p.grad is None for p in teacher.parameters())
    plain = create_loss("sdd", context=context, grids=[1])(s_out, t_out, DistillBatch(labels=labels))["loss"]
    assert plain.item() == pytest.approx(kd_loss(s_out.logits, t_out.logits).item(), rel=1e-5)
    with pytest.raises(ValueError, match="grids"):
        create_loss("sdd", context=context, grids=[2, 4])
    with pytest.raises(ValueError, match="head"):
        create_loss("sdd", context=LossContext(num_classes=5))


@pytest.mark.parametrize(
    "b,c,n,scale,alpha,beta,temperature", [(6, 5, 21, 2.0, 1.0, 8.0, 4.0), (4, 10, 5, 1.0, 3.0, 6.0, 1.0)]
)
def test_sd_dkd_matches_the_equations(b, c, n, scale, alpha, beta, temperature):
    s, t, y = _inputs(b, c, n, scale, seed=2 * b + n)
    expected = reference_sd_dkd(s.numpy(), t.numpy(), y.numpy(), alpha, beta, temperature)
    got = sdd_dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sdd_dkd_loss(x, t, y, alpha=alpha, beta=beta), (s,))


def test_sd_dkd_module_warms_up_and_reduces_to_dkd():
    _, _, context, labels, s_out, t_out = real_pair_outputs()
    loss = create_loss("sdd", context=context, base="dkd", alpha=3.0, beta=6.0, warmup_epochs=20)
    first, late = (
        loss(s_out, t_out, DistillBatch(labels=labels, epoch=0.5)),
        loss(s_out, t_out, DistillBatch(labels=labels, epoch=30.0)),
    )
    assert first["warmup"].item() == pytest.approx(1 / 20) and late["warmup"].item() == 1.0
    assert first["loss"].item() == pytest.approx(late["loss"].item() / 20, rel=1e-6)
    plain = create_loss("sdd", context=context, base="dkd", grids=[1], warmup_epochs=0)
    single = plain(s_out, t_out, DistillBatch(labels=labels))["loss"]
    dkd_value, _, _ = dkd(
        s_out.logits.detach().double().numpy(), t_out.logits.double().numpy(), labels.numpy(), 1.0, 8.0, 4.0
    )
    assert single.item() == pytest.approx(dkd_value, rel=1e-5)
    with pytest.raises(ValueError, match="base: dkd"):
        create_loss("sdd", context=context, beta=6.0)
    with pytest.raises(ValueError, match="'kd' .* or 'dkd'"):
        create_loss("sdd", context=context, base="dist")
