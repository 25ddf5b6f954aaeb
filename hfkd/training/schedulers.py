"""Learning-rate schedules of the reference code that transformers' schedulers do not have.

`get_multistep_schedule` is the multi-step decay of mdistiller (`engine/utils.py: adjust_learning_rate`), CRD and
DIST: the lr is multiplied by `gamma` once for every milestone already passed, with no warm-up unless one is asked
(mmcv's and detectron2's linear warm-up over `warmup_steps` from `warmup_factor` × the lr). mdistiller counts
epochs from 1 and decays when `epoch > milestone`, so with milestones [150, 180, 210] the 151st epoch (0-based
epoch 150) is the first at 0.1× the base lr. The trainer's epochs are 0-based, hence the factor for 0-based epoch e
is gamma ** #{m : m < e + 1} = gamma ** #{m : m <= e}.

`step_decay_lambda` is the `step` schedule of DIST's training code (hunto/image_classification_sota,
`lib/utils/scheduler.py`: `GradualWarmupScheduler` around `StepLR`, stepped with the iteration count): a warm-up in
whole-epoch stairs from `warmup_lr` to the base lr, then the lr times `gamma` every `decay_epochs`, counted per
iteration from the first one after the warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from hfkd.utils.errors import UsageError

# A step that lands on an epoch boundary up to float rounding (steps_per_epoch = 50000 / 128 = 390.625) belongs to
# the new epoch.
_EPOCH_TOLERANCE = 1e-9


def _check(milestones: Iterable[float], gamma: float, steps_per_epoch: float) -> tuple[float, ...]:
    values = tuple(milestones)
    for m in values:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise UsageError(f"Milestones are epochs (numbers >= 0), got {m!r} in {list(values)!r}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise UsageError(f"`gamma` must be a finite number > 0 (0.1 decays the lr tenfold), got {gamma!r}.")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, (int, float)) or not steps_per_epoch > 0:
        raise UsageError(
            f"`steps_per_epoch` must be > 0 (optimizer steps per epoch, may be fractional), got {steps_per_epoch!r}."
        )
    return tuple(sorted(values))


def multistep_epoch_factor(epoch: int, milestones: Iterable[float], gamma: float) -> float:
    """The lr factor during 0-based epoch `epoch`: gamma ** (number of milestones m with m < epoch + 1)."""
    return float(gamma) ** sum(1 for m in milestones if m < epoch + 1)


def multistep_lambda(
    milestones: Iterable[float],
    gamma: float,
    steps_per_epoch: float,
    warmup_steps: int = 0,
    warmup_factor: float = 0.0,
) -> Callable[[int], float]:
    """
    The multi-step lr factor as a function of the optimizer step, for `torch.optim.lr_scheduler.LambdaLR`.

    Step `s` (0-based, as `LambdaLR` counts) belongs to the 0-based epoch floor(s / steps_per_epoch); the factor is
    gamma ** (number of milestones m with m < epoch + 1), mdistiller's rule with its 1-based epochs. Without a warm-up
    step 0 runs at the full lr; with `warmup_steps` W the factor of a step s < W is further multiplied by
    `warmup_factor` + (1 − `warmup_factor`) · s / W, the linear warm-up of mmcv (`warmup_ratio`) and detectron2
    (`WARMUP_FACTOR`), both counting iterations from 0.

    Args:
        milestones (`Iterable[float]`):
            Epochs after which the lr decays (mdistiller's `LR_DECAY_STAGES`, e.g. `[150, 180, 210]`).
        gamma (`float`):
            Multiplicative decay per milestone (mdistiller's `LR_DECAY_RATE`, 0.1).
        steps_per_epoch (`float`):
            Optimizer steps per epoch; may be fractional (dataset size / effective batch size).
        warmup_steps (`int`, *optional*, defaults to 0): Linear warm-up length in optimizer steps.
        warmup_factor (`float`, *optional*, defaults to 0): The warm-up's first factor (mmdet, detectron2: 0.001).

    Returns:
        `Callable[[int], float]`: step -> lr factor.
    """
    stages = _check(milestones, gamma, steps_per_epoch)
    _check_number("warmup_steps", warmup_steps)
    _check_number("warmup_factor (the warm-up's starting lr over the base lr)", warmup_factor)

    def factor(step: int) -> float:
        epoch = math.floor(step / steps_per_epoch + _EPOCH_TOLERANCE)
        ramp = warmup_factor + (1.0 - warmup_factor) * step / warmup_steps if step < warmup_steps else 1.0
        return multistep_epoch_factor(epoch, stages, gamma) * ramp

    return factor


def get_multistep_schedule(
    optimizer: torch.optim.Optimizer,
    milestones: Iterable[float],
    gamma: float,
    steps_per_epoch: float,
    last_epoch: int = -1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.0,
) -> LambdaLR:
    """
    A `LambdaLR` with the multi-step decay of [`multistep_lambda`], stepped once per optimizer step (as the
    `Trainer` steps its scheduler).

    Args:
        optimizer (`torch.optim.Optimizer`): The optimizer whose lr is scheduled.
        milestones (`Iterable[float]`): Epochs after which the lr decays.
        gamma (`float`): Multiplicative decay per milestone.
        steps_per_epoch (`float`): Optimizer steps per epoch (may be fractional).
        last_epoch (`int`, *optional*, defaults to `-1`): The index of the last step, when resuming.
        warmup_steps, warmup_factor: the linear warm-up of [`multistep_lambda`] (none by default).

    Returns:
        `torch.optim.lr_scheduler.LambdaLR`: The schedule.
    """
    factor = multistep_lambda(milestones, gamma, steps_per_epoch, warmup_steps, warmup_factor)
    return LambdaLR(optimizer, factor, last_epoch=last_epoch)


def _check_number(name: str, value: Any, positive: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or (value <= 0 if positive else value < 0):
        raise UsageError(f"`{name}` must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}.")


def step_decay_lambda(
    decay_epochs: float,
    gamma: float,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    warmup_factor: float = 1.0,
) -> Callable[[int], float]:
    """
    DIST's `step` schedule (GradualWarmupScheduler + StepLR) as an lr factor of the optimizer step, for `LambdaLR`.

    With W = warmup_epochs · steps_per_epoch warm-up steps and D = decay_epochs · steps_per_epoch, step `s` (0-based)
    trains at the factor

    - `warmup_factor + (1 − warmup_factor) · ⌊s / spe⌋ · spe / W` while s ≤ W (stairs, one per epoch: the reference
      scales the base lr by the completed epochs only; step W itself is at the full lr);
    - `gamma ** ⌊(s − W − 1) / D⌋` after it: the reference hands StepLR the count s − W − 1, so the first decayed
      step is W + 1 + ⌈D⌉. Without a warm-up (W = 0) the count is s.

    Args:
        decay_epochs (`float`): Epochs between two decays (2.4 in DIST's B2 strategy, 30 in its CIFAR one).
        gamma (`float`): Multiplicative decay (0.97 in B2, 0.1 on CIFAR).
        steps_per_epoch (`float`): Optimizer steps per epoch (1 when the schedule is given in steps).
        warmup_epochs (`float`, *optional*, defaults to 0): Warm-up length in epochs.
        warmup_factor (`float`, *optional*, defaults to 1): The warm-up's starting lr over the base lr
            (`warmup_lr / lr`: 1e-6 / 0.048 in B2; 1 on CIFAR, a constant lr for 120 epochs).

    Returns:
        `Callable[[int], float]`: step -> lr factor.
    """
    _check([], gamma, steps_per_epoch)
    _check_number("decay_epochs", decay_epochs, positive=True)
    _check_number("warmup_epochs", warmup_epochs)
    _check_number("warmup_factor (the warm-up's starting lr over the base lr)", warmup_factor)
    warmup = warmup_epochs * steps_per_epoch
    decay_steps = decay_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup > 0 and step <= warmup:
            # the reference's own arithmetic (floor divisions, no tolerance), so that boundaries fall where its do
            return warmup_factor + (1.0 - warmup_factor) * (step // steps_per_epoch * steps_per_epoch) / warmup
        # A warm-up that ends between two steps (a fraction of an epoch) must not hand StepLR a negative count,
        # which its closed form would turn into a factor 1 / gamma.
        since = max(step - warmup - 1, 0) if warmup > 0 else step
        return float(gamma) ** (since // decay_steps)

    return factor


def optimizer_steps_per_epoch(
    num_samples: int, per_device_batch_size: int, world_size: int, accumulation_steps: int, drop_last: bool = False
) -> int:
    """Optimizer steps in one epoch, counted as the transformers Trainer counts them (ceil over accumulation)."""
    global_batch = per_device_batch_size * max(world_size, 1)
    batches = num_samples // global_batch if drop_last else math.ceil(num_samples / global_batch)
    return max(math.ceil(batches / accumulation_steps), 1)


def _check_milestone_warmup(args: Any) -> None:
    """The milestones' warm-up is `warmup_steps` (linear, from `distill_lr_warmup_lr`), not the step schedule's."""
    if args.distill_lr_warmup_epochs:
        raise UsageError(
            f"`distill_lr_warmup_epochs={args.distill_lr_warmup_epochs}` warms up DIST's step schedule; with "
            "`distill_lr_milestones` warm up linearly over `warmup_steps` optimiser steps instead."
        )
    if args.distill_lr_warmup_lr and not args.warmup_steps:
        raise UsageError(
            f"`distill_lr_warmup_lr={args.distill_lr_warmup_lr}` is where a warm-up starts, and no warm-up is set: "
            "pass `warmup_steps` too (mmdet: 500 from 0.001 x lr; detectron2: 1000) or drop it."
        )


def check_schedule_arguments(args: Any) -> None:
    """
    Check `DistillationArguments`' schedule fields (milestones, or DIST's `step` schedule) before anything runs;
    normalises the milestones to floats. Raises `ValueError` naming the value and the fix.
    """
    milestones, decay_epochs = args.distill_lr_milestones, args.distill_lr_decay_epochs
    if args.distill_lr_milestones_unit not in ("epochs", "steps"):
        raise UsageError(
            f"`distill_lr_milestones_unit` must be 'epochs' or 'steps', got {args.distill_lr_milestones_unit!r}."
        )
    if milestones is not None and decay_epochs is not None:
        raise UsageError(
            f"`distill_lr_milestones` ({list(milestones)}) and `distill_lr_decay_epochs` ({decay_epochs}) are two "
            "schedules: set one of them."
        )
    if milestones is None and decay_epochs is None:
        if args.distill_lr_warmup_epochs or args.distill_lr_warmup_lr:
            raise UsageError(
                "`distill_lr_warmup_epochs` / `distill_lr_warmup_lr` warm up the step schedule, which needs "
                "`distill_lr_decay_epochs`; for the Trainer's schedules use `warmup_steps`."
            )
        return
    if not args.distill_lr_gamma > 0:
        raise UsageError(f"`distill_lr_gamma` must be > 0 (0.1 decays tenfold), got {args.distill_lr_gamma}.")
    if args.warmup_steps and milestones is None:
        raise UsageError(
            f"`warmup_steps={args.warmup_steps}` is the Trainer's warm-up, which `distill_lr_decay_epochs` replaces "
            "and would ignore: drop it, or warm up with `distill_lr_warmup_epochs`."
        )
    if milestones is not None:
        _check_milestone_warmup(args)
        values = list(milestones)
        if not values or any(isinstance(m, bool) or not (isinstance(m, (int, float)) and m >= 0) for m in values):
            raise UsageError(f"`distill_lr_milestones` must be numbers >= 0, e.g. [150, 180, 210]; got {values}.")
        if values != sorted(values):
            raise UsageError(f"`distill_lr_milestones` must be in increasing order, got {values}.")
        args.distill_lr_milestones = [float(m) for m in values]
        return
    _check_number("distill_lr_decay_epochs", decay_epochs, positive=True)
    _check_number("distill_lr_warmup_epochs", args.distill_lr_warmup_epochs)
    _check_number("distill_lr_warmup_lr", args.distill_lr_warmup_lr)
