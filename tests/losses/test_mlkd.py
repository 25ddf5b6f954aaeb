import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss
from hfkd.losses.mlkd import correlation_losses, mlkd_loss

from .mlkd_reference import correlations, mlkd


def _views(b: int = 8, c: int = 10, scale: float = 1.0, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, generator=g, dtype=dtype) * scale for _ in range(4)]


@pytest.mark.parametrize("b,c,scale,temperature", [(8, 10, 1.0, 4.0), (6, 7, 3.0, 1.0), (10, 5, 0.5, 2.0)])
def test_matches_the_equations(b, c, scale, temperature):
    views = _views(b, c, scale, seed=b + c)
    expected = mlkd(*[v.numpy() for v in views], temperature)
    assert mlkd_loss(*views, temperature=temperature).item() == pytest.approx(expected, rel=1e-8)
    cc, bc = correlation_losses(views[0], views[1], temperature=temperature)
    assert (cc.item(), bc.item()) == pytest.approx(correlations(views[0].numpy(), views[1].numpy(), temperature))


def test_pinned_value():
    # From mlkd_reference.mlkd on these inputs (float64).
    g = torch.Generator().manual_seed(103)
    views = [torch.randn(16, 10, generator=g, dtype=torch.float64) for _ in range(4)]
    expected = mlkd(*[v.numpy() for v in views], 4.0)
    assert mlkd_loss(*views).item() == pytest.approx(expected, rel=1e-8)
    assert expected == pytest.approx(7.785500146301272, rel=1e-12)


def test_gradients_reach_both_student_views_only():
    s_weak, t_weak, s_strong, t_strong = _views(6, 5)
    for tensor in (s_weak, t_weak, s_strong, t_strong):
        tensor.requires_grad_()
    mlkd_loss(s_weak, t_weak, s_strong, t_strong).backward()
    assert s_weak.grad is not None and s_strong.grad is not None
    assert t_weak.grad is None and t_strong.grad is None
    views = _views(4, 5, seed=3)
    assert torch.autograd.gradcheck(
        lambda a, b: mlkd_loss(a, views[1], b, views[3]), (views[0].requires_grad_(), views[2].requires_grad_())
    )


def test_identical_views_give_zero():
    s_weak, _, s_strong, _ = _views()
    assert mlkd_loss(s_weak, s_weak.clone(), s_strong, s_strong.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_module_needs_the_strong_view_and_hyperparameters_matter():
    s_weak, t_weak, s_strong, t_strong = _views()
    loss = create_loss("mlkd")
    batch = DistillBatch(student_strong=s_strong, teacher_strong=t_strong)
    out = loss(s_weak, t_weak, batch)
    assert set(out) == {"loss", "kd_weak", "kd_strong", "cc", "bc", "frac_batch", "frac_class"}
    assert out["frac_batch"].item() == 0.5 and out["frac_class"].item() == 0.5
    assert out["loss"].item() == pytest.approx(mlkd_loss(s_weak, t_weak, s_strong, t_strong).item())
    assert not math.isclose(
        create_loss("mlkd", temperature=1.0)(s_weak, t_weak, batch)["loss"].item(), out["loss"].item()
    )
    fixed = create_loss("mlkd", reference_strong_sum=False)(s_weak, t_weak, batch)["kd_strong"].item()
    assert not math.isclose(fixed, out["kd_strong"].item())
    standardized = create_loss("mlkd", logit_standardization=True)(s_weak, t_weak, batch)
    assert standardized["cc"].item() == pytest.approx(out["cc"].item())  # cc/bc keep raw logits
    assert not math.isclose(standardized["kd_weak"].item(), out["kd_weak"].item())
    with pytest.raises(ValueError, match="strong view"):
        loss(s_weak, t_weak, DistillBatch())


def test_trainer_runs_both_models_on_both_views_and_sums_ce(tmp_path):
    from hfkd import DistillationArguments, DistillationTrainer

    from ..testing_utils import tiny_resnet

    student, teacher = tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, distill_loss="mlkd")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    calls = {"student": 0, "teacher": 0}
    student.register_forward_hook(lambda *a: calls.__setitem__("student", calls["student"] + 1))
    teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    g = torch.Generator().manual_seed(0)
    weak, strong = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    trainer.model.train()
    trainer.compute_loss(trainer.model, {"pixel_values": weak, "strong_pixel_values": strong, "labels": labels})
    assert calls == {"student": 2, "teacher": 2}
    ce = trainer._metrics["ce"][-1]
    with torch.no_grad():
        expected = sum(
            torch.nn.functional.cross_entropy(student(pixel_values=x).logits, labels) for x in (weak, strong)
        )
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="strong_pixel_values"):
        trainer.compute_loss(trainer.model, {"pixel_values": weak, "labels": labels})
