"""One module for everything trainable: the student plus a loss that has parameters (adapters, embeddings, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .features import PreactivationRecorder
from .losses import DistillationLoss

ADAPTERS_NAME = "distill_adapters.safetensors"


class DistillationModule(nn.Module):
    """The student and a loss with trainable parameters, wrapped together (as timm's distillation task does).

    The trainer uses this as its model when the loss has parameters, so DDP, the optimizer, mixed precision,
    gradient clipping and checkpoints cover the adapters with no special case. The loss runs inside `forward`:
    under DDP every trainable parameter is used in the wrapped forward, as DDP requires.

    `forward(**student_inputs)` returns the student's output (evaluation); with `distill_inputs=(teacher_output,
    batch)` it returns `(student_output, loss_dict)`.
    """

    def __init__(self, student: nn.Module, distill_loss: DistillationLoss) -> None:
        super().__init__()
        self.student = student
        self.distill_loss = distill_loss
        # Hooks on the student, installed once; they record only inside `run` (not state, not saved).
        self.preact_recorder = (
            PreactivationRecorder(student, "student") if distill_loss.requires_preactivations else None
        )
        # DDP would re-send these from rank 0 every step (51 MB for CRD on CIFAR); the loss keeps them in sync.
        self._ddp_params_and_buffers_to_ignore = [
            f"distill_loss.{name}" for name in distill_loss.rank_synchronized_buffers
        ]

    @property
    def config(self) -> Any:
        return getattr(self.student, "config", None)

    def forward(self, distill_inputs: tuple[Any, Any] | None = None, **student_inputs: Any) -> Any:
        if distill_inputs is None:
            return self.student(**student_inputs)
        if self.preact_recorder is not None:
            # The loss runs below, inside this forward: the student's maps must be on its output first.
            student_output = self.preact_recorder.run(self.student, **student_inputs)
        else:
            student_output = self.student(**student_inputs)
        teacher_output, batch = distill_inputs
        return student_output, self.distill_loss(student_output, teacher_output, batch)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The loss's parameters and buffers, contiguous and detached, for `distill_adapters.safetensors`."""
        return {k: v.detach().contiguous() for k, v in self.distill_loss.state_dict().items()}
