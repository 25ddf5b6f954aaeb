import math

import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import DistillBatch, create_loss, deit_distillation_loss, deit_loss
from hfkd.utils.errors import UsageError

from .reference import deit as reference_deit


def _inputs(b: int, c: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    cls_logits, distillation_logits, teacher = (torch.randn(b, c, generator=g) * scale for _ in range(3))
    return cls_logits, distillation_logits, teacher, torch.randint(0, c, (b,), generator=g)


def _mixup_targets(labels: torch.Tensor, c: int, lam: float, smoothing: float) -> torch.Tensor:
    """timm's `mixup_target`, written out: smoothed one-hots of the batch and its reverse, weighted λ, 1 − λ."""
    off = smoothing / c
    one_hot = torch.full((labels.shape[0], c), off, dtype=torch.float64)
    one_hot[torch.arange(labels.shape[0]), labels] = 1.0 - smoothing + off
    return lam * one_hot + (1 - lam) * one_hot.flip(0)


def _student_output(cls_logits, distillation_logits):
    return {"logits": (cls_logits + distillation_logits) / 2, "cls_logits": cls_logits,
            "distillation_logits": distillation_logits}  # fmt: skip


def test_pinned_value():
    cls_logits, distillation_logits, teacher, y = (t.double() if t.is_floating_point() else t for t in _inputs(
        32, 100, 2.0, seed=7))  # fmt: skip
    hard = deit_loss(cls_logits, distillation_logits, teacher, y).item()
    soft = deit_loss(cls_logits, distillation_logits, teacher, y, distillation_type="soft", temperature=3.0).item()
    assert hard == pytest.approx(6.172297584208696, rel=1e-12)
    assert soft == pytest.approx(3.209311455085171, rel=1e-12)


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
@pytest.mark.parametrize(
    "b,c,scale,alpha,temperature,mixed",
    [(8, 10, 1.0, 0.5, 1.0, False), (5, 100, 4.0, 0.1, 3.0, False), (16, 3, 0.3, 0.9, 2.0, True), (6, 20, 2.0, 0.5,
     1.0, True)],
)  # fmt: skip
def test_matches_the_paper_equations(distillation_type, b, c, scale, alpha, temperature, mixed):
    cls_logits, distillation_logits, teacher, y = _inputs(b, c, scale, seed=b + c)
    # Hard labels (one-hot targets), or Mixup's soft targets with label smoothing folded in, as the trainer feeds CE.
    targets = _mixup_targets(y, c, lam=0.3, smoothing=0.1) if mixed else F.one_hot(y, c).double()
    labels = targets if mixed else y
    expected, base, distillation = reference_deit(
        cls_logits.double().numpy(), distillation_logits.double().numpy(), teacher.double().numpy(),
        targets.numpy(), distillation_type, alpha, temperature,
    )  # fmt: skip
    kwargs = {"distillation_type": distillation_type, "alpha": alpha, "temperature": temperature}
    got, terms = deit_loss(
        cls_logits.double(), distillation_logits.double(), teacher.double(), labels, return_terms=True, **kwargs
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert (terms["base"].item(), terms["distillation"].item()) == pytest.approx((base, distillation), rel=1e-10)
    labels32 = targets.float() if mixed else y
    assert deit_loss(cls_logits, distillation_logits, teacher, labels32, **kwargs).item() == pytest.approx(
        expected, rel=1e-4
    )


def test_hard_ignores_the_temperature_and_soft_divides_by_the_number_of_logits():
    _, distillation_logits, teacher, _ = _inputs(8, 10, 2.0, seed=1)
    hard = [deit_distillation_loss(distillation_logits, teacher, temperature=t).item() for t in (1.0, 4.0)]
    assert hard[0] == hard[1]
    assert hard[0] == pytest.approx(F.cross_entropy(distillation_logits, teacher.argmax(1)).item())
    soft = deit_distillation_loss(distillation_logits, teacher, distillation_type="soft", temperature=4.0)
    batchmean_kd = 16 * F.kl_div(
        F.log_softmax(distillation_logits / 4, 1), F.softmax(teacher / 4, 1), reduction="batchmean"
    )
    assert soft.item() == pytest.approx(batchmean_kd.item() / 10, rel=1e-5)  # B·C, not B: DeiT's losses.py


def test_identical_distillation_head_and_teacher_give_zero_soft_term():
    _, distillation_logits, _, _ = _inputs(8, 10, 3.0, seed=0)
    soft = deit_distillation_loss(distillation_logits, distillation_logits.clone(), distillation_type="soft")
    assert soft.item() == pytest.approx(0.0, abs=1e-6)


def test_module_splits_ce_and_distillation_terms_and_uses_the_runs_ce():
    cls_logits, distillation_logits, teacher, y = _inputs(8, 10, 1.0, seed=4)
    loss = create_loss("deit", alpha=0.3, distillation_type="soft", temperature=2.0)
    smoothed = lambda logits: F.cross_entropy(logits, y, label_smoothing=0.1)  # noqa: E731
    out = loss(_student_output(cls_logits, distillation_logits), teacher, DistillBatch(cross_entropy=smoothed))
    assert set(out) == {"loss", "ce", "base", "distillation"}
    assert all(v.ndim == 0 and math.isfinite(v.item()) for v in out.values())
    total = deit_loss(cls_logits, distillation_logits, teacher, y, alpha=0.3, distillation_type="soft",
                      temperature=2.0, base_criterion=lambda logits, _: smoothed(logits))  # fmt: skip
    torch.testing.assert_close(out["ce"] + out["loss"], total)
    torch.testing.assert_close(out["ce"], 0.7 * smoothed(cls_logits))
    # Without labels (an unlabelled micro-batch) only the distillation head's term is left.
    unlabelled = loss(_student_output(cls_logits, distillation_logits), teacher, DistillBatch())
    assert set(unlabelled) == {"loss", "distillation"}
    assert loss.replaces_task_loss and loss.needs.distillation_head and not loss.needs.labels


def test_gradients_class_head_from_labels_distillation_head_from_teacher():
    cls_logits, distillation_logits, teacher, y = _inputs(8, 10, 1.0, seed=5)
    cls_logits, distillation_logits, teacher = (t.clone().requires_grad_() for t in (cls_logits,
                                                distillation_logits, teacher))  # fmt: skip
    batch = DistillBatch(cross_entropy=lambda logits: F.cross_entropy(logits, y))
    out = create_loss("deit")(_student_output(cls_logits, distillation_logits), teacher, batch)
    heads = [cls_logits, distillation_logits]
    ce_grads = torch.autograd.grad(out["ce"], heads, allow_unused=True, retain_graph=True)
    assert ce_grads[0].abs().sum() > 0 and ce_grads[1] is None
    kd_grads = torch.autograd.grad(out["loss"], heads, allow_unused=True, retain_graph=True)
    assert kd_grads[0] is None and kd_grads[1].abs().sum() > 0
    (out["ce"] + out["loss"]).backward()
    assert teacher.grad is None


@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_gradient_matches_finite_differences(distillation_type):
    cls_logits, distillation_logits, teacher, y = (t.double() if t.is_floating_point() else t for t in _inputs(
        4, 6, 2.0, seed=11))  # fmt: skip
    assert torch.autograd.gradcheck(
        lambda s, d: deit_loss(s, d, teacher, y, distillation_type=distillation_type, temperature=2.0),
        (cls_logits.requires_grad_(), distillation_logits.requires_grad_()),
    )


def test_hyperparameters_change_the_value_and_are_validated():
    cls_logits, distillation_logits, teacher, y = _inputs(8, 10, 1.0, seed=9)
    base = deit_loss(cls_logits, distillation_logits, teacher, y).item()
    assert not math.isclose(deit_loss(cls_logits, distillation_logits, teacher, y, alpha=0.2).item(), base)
    soft = dict(distillation_type="soft")
    soft_value = deit_loss(cls_logits, distillation_logits, teacher, y, **soft).item()
    assert not math.isclose(soft_value, base)
    assert not math.isclose(deit_loss(cls_logits, distillation_logits, teacher, y, temperature=3.0, **soft).item(),
                            soft_value)  # fmt: skip
    for kwargs, needle in (({"distillation_type": "none"}, "'hard'.*'soft'.*--loss ce"), ({"alpha": 1.5}, "alpha"),
                           ({"temperature": 0}, "temperature")):  # fmt: skip
        with pytest.raises(UsageError, match=needle):
            create_loss("deit", **kwargs)


def test_a_student_output_without_a_distillation_head_is_refused_by_name():
    cls_logits, _, teacher, _ = _inputs(8, 10, 1.0, seed=2)
    with pytest.raises(UsageError, match="distillation head.*DeiTForImageClassificationWithTeacher"):
        create_loss("deit")({"logits": cls_logits}, teacher, DistillBatch())
