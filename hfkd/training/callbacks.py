"""Trainer callbacks that keep a run honest: the non-finite guard and the epoch callback.

- `NonFiniteGuard` ORs a "non-finite" flag per loss term into device tensors at every step (no host read) and reads
  them only when asked: at each logging step and before every save. By default a non-finite value stops the run with
  an error naming the steps, the terms and the likely cause; with `distill_nonfinite="skip"` the update of such a
  step is dropped (its gradients cleared before the optimizer step) and counted, up to a limit.
- `check_finite_weights` refuses to write weights that are not finite.
- `EpochCallback` tells a dataset transform which epoch starts (its per-sample random draws depend on it).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


# Terms whose non-finiteness points at a cause, checked in this order.
TEACHER_TERM, STUDENT_TERM = "teacher logits", "student logits"


class NonFiniteError(RuntimeError):
    """A loss term, the logits or the weights became non-finite; nothing non-finite was written."""


class NonFiniteGuard(TrainerCallback):
    """Device-side flags of non-finite values, read only at `check` (see the module docstring). As a trainer
    callback it drops, in `"skip"` mode, the update of a step whose loss was non-finite.

    Args:
        mode (`str`): `"error"` (stop at the next check) or `"skip"` (drop the update of a non-finite step).
        max_skipped (`int`): with `"skip"`, stop once more than this many updates were dropped.
        accelerator: the trainer's, to combine the flags of all processes.
    """

    def __init__(self, mode: str = "error", max_skipped: int = 10, accelerator: Any = None) -> None:
        if mode not in ("error", "skip"):
            raise UsageError(f"distill_nonfinite must be 'error' or 'skip', got {mode!r}.")
        self.mode, self.max_skipped, self.accelerator = mode, max_skipped, accelerator
        self.skipped = 0
        self._flags: dict[str, torch.Tensor] = {}
        self._step_flag: torch.Tensor | None = None
        self._clean_until = 0

    def observe(self, terms: dict[str, torch.Tensor | None]) -> None:
        """OR the non-finiteness of each term into its flag (device tensors only; nothing is read back)."""
        for name, value in terms.items():
            if value is None:
                continue
            bad = ~torch.isfinite(value.detach()).all()
            self._flags[name] = bad if name not in self._flags else self._flags[name] | bad
            self._step_flag = bad if self._step_flag is None else self._step_flag | bad

    def _reduced(self) -> dict[str, bool]:
        if not self._flags:
            return {}
        names = sorted(self._flags)
        flags = torch.stack([self._flags[name] for name in names]).float()
        if self.accelerator is not None:
            # Every process checks at the same points (logging steps, saves), so this is a collective.
            flags = self.accelerator.reduce(flags, reduction="sum")
        return {name: bool(value) for name, value in zip(names, flags.tolist())}

    def check(self, step: int) -> None:
        """Raise `NonFiniteError` if a term went non-finite since the last check (`"error"` mode)."""
        bad = [name for name, flag in self._reduced().items() if flag]
        self._flags.clear()
        if bad and self.mode == "error":
            raise NonFiniteError(self._message(bad, step))
        self._clean_until = step

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """`"skip"` mode: clear the gradients of a non-finite step before the optimizer sees them (one read-back per
        update, the price of the option). Under fp16 the gradient scaler skips such steps itself; they are counted."""
        flag, self._step_flag = self._step_flag, None
        if self.mode != "skip" or flag is None:
            return
        flag = flag.float().reshape(1)
        if self.accelerator is not None:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if not flag.item():
            return
        if getattr(self.accelerator, "scaler", None) is None:
            for group in kwargs["optimizer"].param_groups:
                for parameter in group["params"]:
                    parameter.grad = None
        self.skipped += 1
        logger.warning(f"Step {state.global_step + 1}: non-finite loss, update skipped ({self.skipped} so far).")
        if self.skipped > self.max_skipped:
            raise NonFiniteError(
                f"{self.skipped} updates were skipped for non-finite losses (more than distill_max_skipped_steps="
                f"{self.max_skipped}); the last at step {state.global_step + 1}. {_causes([])}"
            )

    def _message(self, bad: list[str], step: int) -> str:
        steps = f"step {step}" if step <= self._clean_until + 1 else f"steps {self._clean_until + 1} to {step}"
        terms = [name for name in bad if name not in (TEACHER_TERM, STUDENT_TERM)]
        return (
            f"Non-finite values at {steps}: {', '.join(terms) or 'the logits'}"
            + (f" (and the {' and '.join(n for n in bad if n in (TEACHER_TERM, STUDENT_TERM))})" if terms else "")
            + f". {_causes(bad)} Nothing from these steps was saved; the last checkpoint, if any, is intact. To drop "
            "such updates instead of stopping, pass --distill_nonfinite skip."
        )


def _causes(bad: list[str]) -> str:
    if TEACHER_TERM in bad:
        return (
            "The teacher's logits are non-finite: check the teacher's weights (NaN/inf in its checkpoint) and its "
            "inputs, or its precision (an fp16 overflow: try --bf16 or fp32)."
        )
    if STUDENT_TERM in bad:
        return (
            "The student's logits went non-finite: the learning rate is likely too high (lower --learning_rate, "
            "keep --max_grad_norm) or fp16 overflowed (try --bf16)."
        )
    return (
        "Likely causes: a learning rate too high for this loss (lower --learning_rate), a loss hyperparameter out of "
        "range (a tiny temperature), or non-finite inputs."
    )


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise `NonFiniteError` before `what` is written when any parameter or buffer of `model` is not finite."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in tensors])
    if bool(finite.all()):
        return
    names = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
    raise NonFiniteError(
        f"Refusing to write {what}: {len(bad)} weight tensor(s) are not finite ({', '.join(bad[:5])}"
        + (", ..." if len(bad) > 5 else "")
        + f"). {_causes([STUDENT_TERM])}"
    )


class EpochCallback(TrainerCallback):
    """At the start of every epoch (resumes included), tells `transform.set_epoch` which epoch it is."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.transform.set_epoch(int(state.epoch or 0.0))
