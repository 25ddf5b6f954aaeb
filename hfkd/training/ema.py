"""An exponential moving average (EMA) of the student's weights, as timm's training recipes keep one.

With `distill_ema`, the trainer keeps `StudentEMA` (timm's `ModelEmaV3`: decay `distill_ema_decay`, optional warm-up)
and updates it after every optimiser step. The average is what the run produces: evaluation swaps it into the
student, the final model (and a Hub push) is the average, and each checkpoint holds it in `ema.safetensors` next to
the live weights it resumes training from. Under DDP every process averages its own, identical copy of the student.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from torch import nn
from transformers import TrainerCallback

from hfkd.utils.errors import UsageError

EMA_NAME = "ema.safetensors"


class StudentEMA(TrainerCallback):
    """The student's weight average, updated after every optimiser step (a trainer callback).

    Args:
        student: the bare student (not the module that wraps it with the loss).
        decay (`float`): EMA decay per step.
        warmup (`bool`): ramp the decay up over the first steps (timm's `use_warmup`).
    """

    def __init__(self, student: nn.Module, decay: float, warmup: bool = False) -> None:
        self.student = student
        self.warmup = warmup
        self.ema = ModelEmaV3(student, decay=decay, use_warmup=warmup)
        self.ema.requires_grad_(False)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # With warm-up, timm's train.py rule: the 1-based update count, so that the first update copies the weights
        # and the decay ramps up from there (`global_step` is not incremented yet here). Without, the decay applies
        # from the first update to an average that starts at the initial weights, as DIST's ModelEMA does.
        self.ema.update(self.student, step=state.global_step + 1 if self.warmup else None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.ema.module.state_dict().items()}

    def save(self, folder: str) -> None:
        save_file(self.state_dict(), os.path.join(folder, EMA_NAME), metadata={"format": "pt"})

    def load(self, folder: str) -> None:
        path = os.path.join(folder, EMA_NAME)
        if not os.path.isfile(path):
            raise UsageError(
                f"Checkpoint {folder!r} has no {EMA_NAME}: it was written without --distill_ema. Resume it without "
                "--distill_ema, or start a new run with it."
            )
        device = next(self.ema.module.parameters()).device
        self.ema.module.load_state_dict(load_file(path, device=str(device)))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Run the block with the average's weights in the student; the live weights come back afterwards."""
        live = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        with torch.no_grad():
            self.student.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            with torch.no_grad():
                self.student.load_state_dict(live)
