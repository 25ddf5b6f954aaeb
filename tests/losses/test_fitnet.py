import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfkd.losses import DistillBatch, LossContext, create_loss, fitnet_loss
from hfkd.models.features import probe_feature_shapes

from ..testing_utils import collate, synthetic_dataset, tiny_resnet
from .trainable_reference import fitnet as reference_fitnet


def _maps(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)


def _tiny_pair(batch=4):
    student, teacher = tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    context = LossContext(
        num_classes=5,
        dataset_size=16,
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
    )
    # The teacher output keeps its graph: the loss itself must not send gradients into it.
    return (
        student,
        teacher,
        context,
        student(pixel_values=pixels, output_hidden_states=True),
        teacher(pixel_values=pixels, output_hidden_states=True),
    )


def test_pinned_value_from_reference_code():
    s, t = _maps((4, 8, 4, 4), seed=11)
    assert fitnet_loss(s, t).item() == pytest.approx(2.0305296997062325, rel=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 1, 2, 3), (1, 6, 1, 1)])
def test_matches_paper_equation(shape):
    s, t = _maps(shape, seed=sum(shape))
    expected = reference_fitnet(s.numpy(), t.numpy())
    assert fitnet_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert fitnet_loss(s.float(), t.float()).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _maps((2, 3, 2, 2), seed=3)
    s, t = s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: fitnet_loss(x, t), (s,))
    fitnet_loss(s, t).backward()
    assert t.grad is None


def test_identical_maps_give_zero_and_shape_mismatch_raises():
    s, _ = _maps((2, 3, 4, 4), seed=0)
    assert fitnet_loss(s, s.clone()).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        fitnet_loss(s, s[:, :2])


@pytest.mark.parametrize(
    "student_shape,teacher_shape,kind,kernel,stride",
    [
        ((8, 8, 8), (16, 4, 4), nn.Conv2d, (3, 3), (2, 2)),
        ((8, 4, 4), (16, 8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),
        ((8, 6, 6), (16, 4, 4), nn.Conv2d, (3, 3), (1, 1)),
        ((8, 4, 4), (16, 4, 4), nn.Conv2d, (1, 1), (1, 1)),
    ],
)
def test_regressor_follows_mdistillers_kernel_rules(student_shape, teacher_shape, kind, kernel, stride):
    context = LossContext(student_feature_shapes=[student_shape] * 3, teacher_feature_shapes=[teacher_shape] * 3)
    regressor = create_loss("fitnet", context=context).regressors[0]
    assert type(regressor.conv) is kind and regressor.conv.kernel_size == kernel and regressor.conv.stride == stride
    assert isinstance(regressor.bn, nn.BatchNorm2d) and regressor.use_relu
    out = regressor(torch.randn(2, *student_shape))
    assert tuple(out.shape[1:]) == teacher_shape and (out >= 0).all()


def test_other_sizes_are_resized_and_missing_shapes_raise():
    """A student map smaller than the teacher's but not half of it (models fed different input sizes) is resized
    bilinearly to the teacher's size before a 3x3 conv: the regression target is the teacher's map itself."""
    context = LossContext(student_feature_shapes=[(8, 3, 3)] * 3, teacher_feature_shapes=[(8, 5, 5)] * 3)
    loss = create_loss("fitnet", context=context)
    regressor = loss.regressors[0]
    assert regressor.resize == (5, 5) and regressor.conv.kernel_size == (3, 3) and regressor.conv.padding == (1, 1)
    student = torch.randn(2, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    regressor.eval()
    expected = torch.relu(regressor.bn(regressor.conv(F.interpolate(student, size=(5, 5), mode="bilinear"))))
    torch.testing.assert_close(regressor(student), expected)
    with pytest.raises(ValueError, match="needs feature shapes; the trainer probes them"):
        create_loss("fitnet", context=LossContext(num_classes=5))


def test_module_on_a_tiny_pair_trains_student_and_regressor_only():
    student, teacher, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("fitnet", context=context)
    assert loss.hparams() == {"stages": (2,), "teacher_stages": None, "feat_weight": 100.0}
    out = loss(student_out, teacher_out, DistillBatch())
    assert set(out) == {"loss", "fitnet"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    assert out["loss"].item() == pytest.approx(100 * out["fitnet"].item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hyperparameters_change_the_value():
    _, _, context, student_out, teacher_out = _tiny_pair()
    torch.manual_seed(0)
    base = create_loss("fitnet", context=context)(student_out, teacher_out, DistillBatch())["loss"].item()
    torch.manual_seed(0)
    weighted = create_loss("fitnet", feat_weight=1.0, context=context)(student_out, teacher_out, DistillBatch())
    assert weighted["loss"].item() == pytest.approx(base / 100, rel=1e-6)
    torch.manual_seed(0)
    other = create_loss("fitnet", stages=[1], context=context)(student_out, teacher_out, DistillBatch())["loss"]
    assert not math.isclose(other.item(), base)


def test_trains_end_to_end_with_the_trainer(tmp_path):
    from hfkd import DistillationArguments, DistillationTrainer

    args = DistillationArguments(
        output_dir=str(tmp_path),
        distill_loss="fitnet",
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1),
        teacher_model=tiny_resnet(wide=True, seed=2),
        args=args,
        train_dataset=synthetic_dataset(8),
        data_collator=collate,
    )
    regressor = trainer.model.distill_loss.regressors[0].conv.weight
    before = regressor.detach().clone()
    trainer.train()
    assert not torch.equal(before, regressor)
    assert any("distill/fitnet" in entry for entry in trainer.state.log_history)
