"""hfkd.schedulers: mdistiller's multi-step lr decay, checked against an independent loop over 1-based epochs, and
DIST's step schedule, checked against torch's StepLR driven as DIST's training loop drives it."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import StepLR

from hfkd.training.schedulers import get_multistep_schedule, multistep_lambda, step_decay_lambda

STAGES = [150, 180, 210]


def reference_epoch_lrs(base_lr: float, stages: list[int], gamma: float, epochs: int) -> list[float]:
    """mdistiller's `adjust_learning_rate`, epoch by epoch, with its 1-based epochs."""
    lrs = []
    for epoch in range(1, epochs + 1):
        steps = np.sum(epoch > np.asarray(stages))
        lrs.append(base_lr * gamma**steps if steps > 0 else base_lr)
    return lrs


def reference_step_lrs(base_lr: float, stages: list[int], gamma: float, epochs: int, steps_per_epoch: Fraction):
    """The per-step lr: step s belongs to the epoch k with k * steps_per_epoch <= s < (k + 1) * steps_per_epoch,
    computed in exact rational arithmetic."""
    per_epoch = reference_epoch_lrs(base_lr, stages, gamma, epochs)
    total = int(epochs * steps_per_epoch)
    return [per_epoch[int(Fraction(s) / steps_per_epoch)] for s in range(total)]


@pytest.mark.parametrize("steps_per_epoch", [Fraction(1), Fraction(3), Fraction(5, 2), Fraction(50000, 128)])
def test_lambda_matches_the_epoch_loop(steps_per_epoch):
    factor = multistep_lambda(STAGES, 0.1, float(steps_per_epoch))
    expected = reference_step_lrs(1.0, STAGES, 0.1, 240, steps_per_epoch)
    got = [factor(s) for s in range(len(expected))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_inexact_fractional_steps_per_epoch_puts_boundary_steps_in_the_new_epoch():
    # 10/3 steps per epoch has no exact float; step 10 starts epoch 3 exactly (10 * 3 // 10 == 3).
    factor = multistep_lambda([3], 0.5, 10 / 3)
    for s in range(40):
        epoch = (3 * s) // 10  # exact integer arithmetic
        assert factor(s) == (0.5 if epoch >= 3 else 1.0), s


def test_first_decay_is_the_151st_epoch_and_there_is_no_warmup():
    factor = multistep_lambda(STAGES, 0.1, 4)
    assert factor(0) == 1.0  # no warm-up: the first step runs at the full lr
    assert factor(150 * 4 - 1) == 1.0  # last step of the 150th epoch (1-based)
    assert factor(150 * 4) == pytest.approx(0.1)  # first step of the 151st
    assert factor(180 * 4) == pytest.approx(0.01)
    assert factor(210 * 4) == pytest.approx(0.001)
    assert factor(10**6) == pytest.approx(0.001)


def test_fewer_steps_than_epochs():
    # Half a step per epoch: step s covers epochs 2s and 2s + 1.
    factor = multistep_lambda([2, 4], 0.1, 0.5)
    assert [factor(s) for s in range(4)] == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_unsorted_milestones_and_no_milestones():
    assert multistep_lambda([210, 150, 180], 0.1, 1)(200) == pytest.approx(0.01)
    assert multistep_lambda([], 0.1, 1)(10**6) == 1.0


def test_scheduler_drives_the_optimizer_lr():
    steps_per_epoch, epochs = 3, 12
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.2, momentum=0.9)
    scheduler = get_multistep_schedule(optimizer, [4, 8], 0.1, steps_per_epoch)
    seen = []
    for _ in range(steps_per_epoch * epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = reference_step_lrs(0.2, [4, 8], 0.1, epochs, Fraction(steps_per_epoch))
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[0] == 0.2


def test_resume_from_state_dict_continues_the_schedule():
    def build():
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return optimizer, get_multistep_schedule(optimizer, [2], 0.1, 5)

    optimizer, scheduler = build()
    for _ in range(9):
        optimizer.step()
        scheduler.step()
    resumed_opt, resumed = build()
    resumed.load_state_dict(scheduler.state_dict())
    resumed_opt.load_state_dict(optimizer.state_dict())
    assert resumed.last_epoch == 9
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    resumed_opt.step()
    resumed.step()
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(0.1)  # step 10 is the first of epoch 2 (0-based)


@pytest.mark.parametrize(
    "milestones, gamma, steps_per_epoch",
    [([-1], 0.1, 1), (["30"], 0.1, 1), ([30], 0.0, 1), ([30], float("nan"), 1), ([30], 0.1, 0), ([30], 0.1, -2.5)],
)
def test_bad_values_are_rejected(milestones, gamma, steps_per_epoch):
    with pytest.raises(ValueError):
        multistep_lambda(milestones, gamma, steps_per_epoch)


def dist_step_schedule_reference(base_lr, warmup_lr, warmup_epochs, decay_epochs, gamma, steps_per_epoch, steps):
    """The lr of each iteration under DIST's `tools/train.py` (image_classification_sota @ d9662f7): after iteration
    k (1-based) it calls `scheduler.step(k)`; `GradualWarmupScheduler` (`lib/utils/scheduler.py`, multiplier 1)
    holds the per-epoch stairs up to W warm-up iterations and then hands torch's `StepLR` (step size D iterations)
    the count k - W - 1, or k itself without a warm-up. Here torch's own StepLR does that part."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    step_lr = StepLR(optimizer, decay_epochs * steps_per_epoch, gamma=gamma)
    warmup = warmup_epochs * steps_per_epoch
    lrs = []
    for k in range(steps):  # iteration k + 1 trains at the lr set by scheduler.step(k) (k = 0: as built)
        if warmup and k <= warmup:
            stairs = (k // steps_per_epoch) * steps_per_epoch / warmup
            lrs.append(warmup_lr + (base_lr - warmup_lr) * stairs)
        else:
            optimizer.step()  # (no gradient: nothing moves) as the reference steps its optimiser first
            with pytest.warns(UserWarning, match="epoch parameter"):  # the deprecated call the reference makes
                step_lr.step(k - warmup - 1 if warmup else k)
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize(
    ("base_lr", "warmup_lr", "warmup_epochs", "decay_epochs", "gamma", "steps_per_epoch"),
    [
        (0.048, 1e-6, 3, 2.4, 0.97, 7),  # DIST's B2 strategy (dist_b2.yaml) at 7 iterations per epoch
        (0.05, 0.05, 12, 3, 0.1, 5),  # dist_cifar.yaml's shape: a flat warm-up at the full lr, then x0.1 stairs
        (0.01, 0.05, 2, 1, 0.5, 4),  # a warm-up lr above the lr: the stairs go down
        (0.1, 0.0, 0, 2.4, 0.97, 6),  # no warm-up: StepLR gets the iteration count itself
    ],
    ids=["b2", "cifar", "downward-warmup", "no-warmup"],
)
def test_step_schedule_is_dists(base_lr, warmup_lr, warmup_epochs, decay_epochs, gamma, steps_per_epoch):
    steps = 40 * steps_per_epoch
    expected = dist_step_schedule_reference(
        base_lr, warmup_lr, warmup_epochs, decay_epochs, gamma, steps_per_epoch, steps
    )
    factor = step_decay_lambda(decay_epochs, gamma, steps_per_epoch, warmup_epochs, warmup_lr / base_lr)
    np.testing.assert_allclose([base_lr * factor(k) for k in range(steps)], expected, rtol=1e-12)
    if warmup_epochs:  # stairs: one lr per epoch, the full lr at the last warm-up step, the first decay ⌈D⌉ + 1 later
        warmup, decay = warmup_epochs * steps_per_epoch, math.ceil(decay_epochs * steps_per_epoch)
        assert len({factor(k) for k in range(steps_per_epoch)}) == 1 and factor(warmup) == pytest.approx(1.0)
        assert factor(warmup + decay) == pytest.approx(1.0) and factor(warmup + decay + 1) == pytest.approx(gamma)


def test_step_schedule_as_a_lambdalr_on_an_optimiser():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, step_decay_lambda(1, 0.5, 2, 1, 0.25))
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # stairs 0.05, 0.05, then the full 0.2 at step 2 (= W) and step 3; x0.5 from step W + D + 1 = 5 on
    assert rates == pytest.approx([0.05, 0.05, 0.2, 0.2, 0.2, 0.1, 0.1, 0.05])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay_epochs": 0}, "decay_epochs` must be a finite number > 0"),
        ({"decay_epochs": float("inf")}, "decay_epochs"),
        ({"warmup_epochs": -1}, "warmup_epochs` must be a finite number >= 0"),
        ({"warmup_factor": -0.5}, "warm-up's starting lr"),
        ({"gamma": 0}, "gamma"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
    ],
)
def test_step_schedule_bad_values(kwargs, match):
    values = {"decay_epochs": 2.4, "gamma": 0.97, "steps_per_epoch": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        step_decay_lambda(**values)


def test_a_warmup_that_ends_between_steps_never_raises_the_lr_above_the_base():
    """W = 0.25 · 13 = 3.25 steps: step 4 is the first after the warm-up (count 4 − 3.25 − 1 < 0 → 0, not −1)."""
    factor = step_decay_lambda(0.5, 0.5, 13, 0.25, 0.02)
    rates = [factor(k) for k in range(40)]
    assert max(rates) == 1.0 and rates[:4] == [0.02] * 4 and rates[4] == 1.0
    assert rates.index(0.5) == 11  # (11 − 3.25 − 1) // 6.5 = 1, (10 − 3.25 − 1) // 6.5 = 0
