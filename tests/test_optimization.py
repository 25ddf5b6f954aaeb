"""What the references' training code does and the Trainer does not: weight decay on every parameter, timm's
optimisers, and an EMA of the student that is evaluated, saved and resumed."""

import pytest
import torch
from safetensors.torch import load_file
from timm.optim import RMSpropTF

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.training.ema import EMA_NAME

from .testing_utils import collate, synthetic_dataset, tiny_resnet


def _args(tmp_path, **kwargs) -> DistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
        per_device_eval_batch_size=8, max_steps=4, learning_rate=0.1, optim="sgd", weight_decay=0.01,
        max_grad_norm=0.0, save_strategy="no", seed=0, data_seed=0, disable_tqdm=True, lr_scheduler_type="constant",
        dataloader_num_workers=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return DistillationArguments(**defaults)


def _trainer(tmp_path, student=None, **kwargs) -> DistillationTrainer:
    return DistillationTrainer(
        model=student if student is not None else tiny_resnet(seed=1), teacher_model=tiny_resnet(wide=True, seed=2),
        args=_args(tmp_path, **kwargs), train_dataset=synthetic_dataset(16), eval_dataset=synthetic_dataset(8, seed=1),
        data_collator=collate,
    )  # fmt: skip


def _rates(trainer, steps: int) -> list[float]:
    """The learning rate of each of the first `steps` optimiser steps, as the scheduler sets them."""
    rates = []
    for _ in range(steps):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def _decayed(trainer) -> set[int]:
    return {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}


def test_decay_on_every_parameter_or_on_weights_only(tmp_path):
    default, everything = _trainer(tmp_path / "a"), _trainer(tmp_path / "b", distill_decay_all_parameters=True)
    for trainer in (default, everything):
        trainer.create_optimizer()
    student = lambda trainer: list(trainer.student.parameters())  # noqa: E731
    biases = {id(p) for n, p in default.student.named_parameters() if n.endswith("bias")}
    assert biases and not biases & _decayed(default)
    assert _decayed(everything) == {id(p) for p in student(everything)}
    # One SGD step with decay on every parameter is the hand-written step torch.optim.SGD takes.
    reference = tiny_resnet(seed=1)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, weight_decay=0.01)
    batch = collate([synthetic_dataset(16)[i] for i in range(4)])
    with torch.no_grad():
        expected = [p - 0.1 * 0.01 * p for p in reference.parameters()]  # zero loss gradient: decay only
    for p in reference.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for got, want in zip(reference.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert batch["pixel_values"].shape[0] == 4


def test_no_decay_on_1d_parameters_exempts_batchnorm_weights_too(tmp_path):
    default, filtered = _trainer(tmp_path / "a"), _trainer(tmp_path / "b", distill_no_decay_1d=True)
    for trainer in (default, filtered):
        trainer.create_optimizer()
    norm_weights = {id(p) for n, p in default.student.named_parameters() if p.ndim == 1 and not n.endswith("bias")}
    assert norm_weights and norm_weights <= _decayed(default)  # the Trainer decays BatchNorm weights
    assert _decayed(filtered) == {id(p) for p in filtered.student.parameters() if p.ndim > 1}
    with pytest.raises(ValueError, match="contradict each other"):
        _args(tmp_path, distill_no_decay_1d=True, distill_decay_all_parameters=True)


def test_milestones_in_steps_need_no_dataset_length(tmp_path):
    trainer = _trainer(tmp_path, distill_lr_milestones=[2, 3], distill_lr_milestones_unit="steps", max_steps=5)
    trainer.create_optimizer_and_scheduler(num_training_steps=5)
    rates = _rates(trainer, 5)
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])  # from step 2 on x0.1, from step 3 on x0.01
    with pytest.raises(ValueError, match="'epochs' or 'steps'"):
        _args(tmp_path, distill_lr_milestones=[2], distill_lr_milestones_unit="iterations")


def test_milestones_warm_up_linearly_as_mmcv_and_detectron2(tmp_path):
    """mmcv's linear warm-up (and detectron2's WarmupMultiStepLR): during iteration i < W the lr is
    lr · milestone factor · (r + (1 − r) · i / W), r the starting lr over the base lr. W = 4, r = 0.01 / 0.1."""
    trainer = _trainer(tmp_path, distill_lr_milestones=[2, 6], distill_lr_milestones_unit="steps", max_steps=8,
                       warmup_steps=4, distill_lr_warmup_lr=0.01)  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    rates = _rates(trainer, 8)
    by_hand = [0.1 * 0.1, 0.1 * 0.325, 0.01 * 0.55, 0.01 * 0.775, 0.01, 0.01, 0.001, 0.001]
    assert rates == pytest.approx(by_hand)


def test_dists_step_schedule_sets_the_lr_of_every_training_step(tmp_path):
    """16 samples at batch 4: 4 steps per epoch. A 1-epoch stair warm-up from 0.025 (steps 0-3), the full 0.1 from
    step 4 (= W), then x0.5 every epoch counted from step W + 1: steps 5-8 at 0.1, steps 9-11 at 0.05."""
    trainer = _trainer(
        tmp_path, max_steps=-1, num_train_epochs=3, distill_lr_decay_epochs=1, distill_lr_gamma=0.5,
        distill_lr_warmup_epochs=1, distill_lr_warmup_lr=0.025, lr_scheduler_type="linear",
    )  # fmt: skip
    used = []
    original = trainer.compute_loss

    def spy(*args, **kwargs):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert used == pytest.approx([0.025] * 4 + [0.1] * 5 + [0.05] * 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distill_lr_decay_epochs": 2.4, "distill_lr_milestones": [30]}, "two schedules: set one of them"),
        ({"distill_lr_warmup_epochs": 3}, "warm up the step schedule, which needs `distill_lr_decay_epochs`"),
        ({"distill_lr_warmup_lr": 1e-6}, "needs `distill_lr_decay_epochs`"),
        ({"distill_lr_decay_epochs": 2.4, "warmup_steps": 100}, "warmup_steps=100.*distill_lr_warmup_epochs"),
        ({"distill_lr_milestones": [30], "distill_lr_warmup_epochs": 2}, "with `distill_lr_milestones` warm up"),
        ({"distill_lr_milestones": [30], "distill_lr_warmup_lr": 1e-5}, "no warm-up is set: pass `warmup_steps`"),
        ({"distill_lr_decay_epochs": 0}, "distill_lr_decay_epochs` must be a finite number > 0, got 0"),
        ({"distill_lr_decay_epochs": 2.4, "distill_lr_warmup_epochs": -1}, "distill_lr_warmup_epochs` must be"),
        ({"distill_lr_decay_epochs": 2.4, "distill_lr_gamma": 0}, "distill_lr_gamma` must be > 0"),
    ],
)
def test_bad_schedule_settings_are_refused_with_the_fix(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kwargs)


def test_a_timm_optimiser_by_name_with_its_kwargs_and_groups(tmp_path):
    trainer = _trainer(tmp_path, distill_timm_optimizer="RMSpropTF", distill_timm_optimizer_kwargs='{"alpha": 0.9}')
    trainer.create_optimizer()
    optimizer = trainer.optimizer
    assert isinstance(optimizer, RMSpropTF) and all(g["alpha"] == 0.9 for g in optimizer.param_groups)
    assert all(g["lr"] == 0.1 for g in optimizer.param_groups)
    biases = {id(p) for n, p in trainer.student.named_parameters() if n.endswith("bias")}
    assert biases and not biases & _decayed(trainer)
    trainer.train()
    assert trainer.state.global_step == 4
    with pytest.raises(ValueError, match="Did you mean rmsproptf"):
        _args(tmp_path, distill_timm_optimizer="rmsprop_tf")


def test_ema_is_the_average_evaluated_saved_and_resumed(tmp_path):
    decay = 0.5
    student = tiny_resnet(seed=1)
    trainer = _trainer(tmp_path / "a", student=student, distill_ema=True, distill_ema_decay=decay,
                       save_strategy="steps", save_steps=2)  # fmt: skip
    expected = {k: v.detach().clone() for k, v in student.state_dict().items()}
    live = []

    original = trainer.ema.on_optimizer_step

    def track(*args, **kwargs):
        original(*args, **kwargs)
        live.append({k: v.detach().clone() for k, v in student.state_dict().items()})

    trainer.ema.on_optimizer_step = track
    trainer.train()
    # Without warm-up, DIST's ModelEMA: the average starts at the initial weights and every step, the first too,
    # does e <- d·e + (1 - d)·w for float tensors (integer buffers are copied).
    for weights in live:
        for key, value in weights.items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()
    ema = trainer.ema.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(ema[key], value, rtol=1e-6, atol=1e-7)
    # Evaluation sees the average; the live weights come back afterwards.
    before = {k: v.clone() for k, v in student.state_dict().items()}
    metrics = trainer.evaluate()
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    averaged = tiny_resnet(seed=9)
    averaged.load_state_dict(ema)
    plain = DistillationTrainer(
        model=averaged, args=_args(tmp_path / "p", distill_loss="ce"), eval_dataset=synthetic_dataset(8, seed=1),
        data_collator=collate,
    ).evaluate()
    assert metrics["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)
    # The final model is the average; a checkpoint keeps the live weights and the average beside them.
    trainer.save_model()
    saved = load_file(tmp_path / "a" / "out" / "model.safetensors")
    torch.testing.assert_close(saved["classifier.1.weight"], ema["classifier.1.weight"])
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    assert (checkpoint / EMA_NAME).is_file()
    # With warm-up, timm's train.py rule: the first update copies the weights.
    warm = _trainer(tmp_path / "w", distill_ema=True, distill_ema_decay=decay, distill_ema_warmup=True, max_steps=1)
    warm.train()
    for key, value in warm.student.state_dict().items():
        torch.testing.assert_close(warm.ema.state_dict()[key], value, rtol=0, atol=0)
    # Resuming from checkpoint-2 restores the average: the end is the uninterrupted run's, exactly.
    resumed = _trainer(tmp_path / "b", distill_ema=True, distill_ema_decay=decay, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for key, value in resumed.ema.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)
