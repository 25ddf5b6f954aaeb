"""What keeps a run honest on disk: non-finite losses found without a per-step read-back, finite weights before any
save, checkpoints that are either complete or recognisably incomplete, and per-epoch data that follows the trainer.

- `NonFiniteGuard` ORs a "non-finite" flag per loss term into device tensors at every step (no host read) and reads
  them only when asked: at each logging step and before every save. By default a non-finite value stops the run with
  an error naming the steps, the terms and the likely cause; with `distill_nonfinite="skip"` the update of such a
  step is dropped (its gradients cleared before the optimizer step) and counted, up to a limit.
- `check_finite_weights` refuses to write weights that are not finite.
- A checkpoint is complete once `CHECKPOINT_MARKER` is written into it, after everything else, by the main process;
  `latest_complete_checkpoint` skips (and names) the others.
- `EpochCallback` tells a dataset transform which epoch starts (its per-sample random draws depend on it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

CHECKPOINT_MARKER = "hfkd_checkpoint_complete.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
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
            raise ValueError(f"distill_nonfinite must be 'error' or 'skip', got {mode!r}.")
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


def mark_checkpoint_complete(folder: str) -> None:
    """Write the marker that makes `folder` a complete checkpoint: the files it holds and their sizes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != CHECKPOINT_MARKER:
                path = os.path.join(root, name)
                files[os.path.relpath(path, folder)] = os.path.getsize(path)
    tmp = os.path.join(folder, CHECKPOINT_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, CHECKPOINT_MARKER))


def checkpoint_is_complete(folder: str) -> bool:
    """Whether `folder` has its marker and every file the marker lists, with the recorded size."""
    marker = os.path.join(folder, CHECKPOINT_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        os.path.isfile(os.path.join(folder, name)) and os.path.getsize(os.path.join(folder, name)) == size
        for name, size in files.items()
    )


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """The `checkpoint-N` folders of `output_dir`, as (N, path) sorted by N."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_DIR.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint of `output_dir`; newer incomplete ones are named in a warning and skipped."""
    for _, path in reversed(checkpoints(output_dir)):
        if checkpoint_is_complete(path):
            return path
        logger.warning(
            f"Skipping {path}: an incomplete checkpoint (no {CHECKPOINT_MARKER}; the run was likely stopped while "
            "writing it). Resuming from an older complete one."
        )
    return None


def rotate_complete_checkpoints(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `keep`, the best one); delete the older ones, and incomplete
    ones older than the newest complete checkpoint (left by a killed run, never resumable)."""
    if not limit or limit <= 0:
        return
    found = checkpoints(output_dir)
    complete = [path for _, path in found if checkpoint_is_complete(path)]
    if not complete:
        return
    newest = max(step for step, path in found if path in complete)
    protected = set(complete[-limit:]) | ({os.path.normpath(keep)} if keep else set())
    for step, path in found:
        stale_incomplete = path not in complete and step < newest
        if os.path.normpath(path) not in protected and (path in complete or stale_incomplete):
            logger.info(f"Deleting older checkpoint {path} (save_total_limit={limit}).")
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(output_dir: str, resume: str | bool | None) -> str | None:
    """What `resume_from_checkpoint` means: `None`/`False` nothing; `True`, `"true"` or `"latest"` the newest complete
    checkpoint of `output_dir`; a path that folder, refused when it is an incomplete checkpoint."""
    if resume is None or resume is False or str(resume).lower() in ("false", "none", ""):
        return None
    if resume is True or str(resume).lower() in ("true", "latest", "last"):
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"resume_from_checkpoint={resume!r}: {output_dir!r} holds no complete checkpoint. Start without "
                "--resume_from_checkpoint, or pass the path of a checkpoint folder."
            )
        logger.warning(f"Resuming from {found}.")
        return found
    resume = str(resume)
    if not os.path.isdir(resume):
        raise ValueError(f"resume_from_checkpoint={resume!r} is not a folder. Pass a checkpoint-N folder or 'latest'.")
    if not checkpoint_is_complete(resume):
        missing = [n for n in ("trainer_state.json", "config.json") if not os.path.isfile(os.path.join(resume, n))]
        if missing:
            raise ValueError(
                f"{resume!r} is an incomplete checkpoint (no {', '.join(missing)}): the run was stopped while writing "
                "it. Pass an older checkpoint, or --resume_from_checkpoint latest."
            )
        logger.warning(f"{resume!r} has no completeness marker (not written by hfkd); resuming from it as it is.")
    return resume


class EpochCallback(TrainerCallback):
    """At the start of every epoch (resumes included), tells `transform.set_epoch` which epoch it is."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.transform.set_epoch(int(state.epoch or 0.0))
