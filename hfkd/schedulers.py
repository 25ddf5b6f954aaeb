"""Learning-rate schedules of the reference code that transformers' schedulers do not have.

`get_multistep_schedule` is the multi-step decay of mdistiller (`engine/utils.py: adjust_learning_rate`), CRD and
DIST: the lr is multiplied by `gamma` once for every milestone already passed, with no warm-up. mdistiller counts
epochs from 1 and decays when `epoch > milestone`, so with milestones [150, 180, 210] the 151st epoch (0-based
epoch 150) is the first at 0.1× the base lr. The trainer's epochs are 0-based, hence the factor for 0-based epoch e
is gamma ** #{m : m < e + 1} = gamma ** #{m : m <= e}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

# A step that lands on an epoch boundary up to float rounding (steps_per_epoch = 50000 / 128 = 390.625) belongs to
# the new epoch.
_EPOCH_TOLERANCE = 1e-9


def _check(milestones: Iterable[float], gamma: float, steps_per_epoch: float) -> tuple[float, ...]:
    values = tuple(milestones)
    for m in values:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"Milestones are epochs (numbers >= 0), got {m!r} in {list(values)!r}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"`gamma` must be a finite number > 0 (0.1 decays the lr tenfold), got {gamma!r}.")
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, (int, float)) or not steps_per_epoch > 0:
        raise ValueError(
            f"`steps_per_epoch` must be > 0 (optimizer steps per epoch, may be fractional), got {steps_per_epoch!r}."
        )
    return tuple(sorted(values))


def multistep_epoch_factor(epoch: int, milestones: Iterable[float], gamma: float) -> float:
    """The lr factor during 0-based epoch `epoch`: gamma ** (number of milestones m with m < epoch + 1)."""
    return float(gamma) ** sum(1 for m in milestones if m < epoch + 1)


def multistep_lambda(milestones: Iterable[float], gamma: float, steps_per_epoch: float) -> Callable[[int], float]:
    """
    The multi-step lr factor as a function of the optimizer step, for `torch.optim.lr_scheduler.LambdaLR`.

    Step `s` (0-based, as `LambdaLR` counts) belongs to the 0-based epoch floor(s / steps_per_epoch); the factor is
    gamma ** (number of milestones m with m < epoch + 1), mdistiller's rule with its 1-based epochs. There is no
    warm-up: step 0 runs at the full lr.

    Args:
        milestones (`Iterable[float]`):
            Epochs after which the lr decays (mdistiller's `LR_DECAY_STAGES`, e.g. `[150, 180, 210]`).
        gamma (`float`):
            Multiplicative decay per milestone (mdistiller's `LR_DECAY_RATE`, 0.1).
        steps_per_epoch (`float`):
            Optimizer steps per epoch; may be fractional (dataset size / effective batch size).

    Returns:
        `Callable[[int], float]`: step -> lr factor.
    """
    stages = _check(milestones, gamma, steps_per_epoch)

    def factor(step: int) -> float:
        epoch = math.floor(step / steps_per_epoch + _EPOCH_TOLERANCE)
        return multistep_epoch_factor(epoch, stages, gamma)

    return factor


def get_multistep_schedule(
    optimizer: torch.optim.Optimizer,
    milestones: Iterable[float],
    gamma: float,
    steps_per_epoch: float,
    last_epoch: int = -1,
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

    Returns:
        `torch.optim.lr_scheduler.LambdaLR`: The schedule.
    """
    return LambdaLR(optimizer, multistep_lambda(milestones, gamma, steps_per_epoch), last_epoch=last_epoch)


def optimizer_steps_per_epoch(
    num_samples: int, per_device_batch_size: int, world_size: int, accumulation_steps: int, drop_last: bool = False
) -> int:
    """Optimizer steps in one epoch, counted as the transformers Trainer counts them (ceil over accumulation)."""
    global_batch = per_device_batch_size * max(world_size, 1)
    batches = num_samples // global_batch if drop_last else math.ceil(num_samples / global_batch)
    return max(math.ceil(batches / accumulation_steps), 1)
