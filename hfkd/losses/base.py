"""The interface every hfkd loss implements: inputs, context and the loss base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class PaperRef:
    """Where a loss comes from; the model card cites it."""

    title: str
    authors: str
    venue: str
    arxiv_id: str
    bibtex: str
    code_url: str = ""

    @property
    def url(self) -> str:
        """The arXiv page, or the official code when the paper has no arXiv id."""
        return f"https://arxiv.org/abs/{self.arxiv_id}" if self.arxiv_id else self.code_url


@dataclass
class LossContext:
    """What a loss may need to know before training starts: class count, dataset size, feature shapes, and for
    losses that declare `requires_classifier_heads` the models' heads as functions of a feature map."""

    num_classes: int | None = None
    dataset_size: int | None = None
    student_feature_shapes: list[tuple[int, ...]] | None = None
    teacher_feature_shapes: list[tuple[int, ...]] | None = None
    student_head: Any = None
    teacher_head: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillBatch:
    """Per-step inputs besides the two model outputs.

    `epoch` is the trainer's fractional, 0-based epoch (`TrainerState.epoch`); `sample_index` holds dataset
    indices when the loss declares `requires_sample_index`; `student_strong` and `teacher_strong` are both models'
    outputs on a strongly augmented view of the batch when the loss declares `requires_strong_view`.
    """

    labels: torch.Tensor | None = None
    epoch: float = 0.0
    sample_index: torch.Tensor | None = None
    student_strong: Any = None
    teacher_strong: Any = None


def loss_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Loss math runs in float32, or float64 when the inputs are float64."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class DistillationLoss(nn.Module):
    """Base class of every registered loss.

    Subclasses implement `forward(student, teacher, batch)` and return `{"loss": scalar, <name>: component, ...}`,
    every value averaged over the samples of the micro-batch. The components are logged as `distill/<name>`.
    """

    key: ClassVar[str] = ""
    requires_hidden_states: ClassVar[bool] = False
    requires_labels: ClassVar[bool] = False
    requires_sample_index: ClassVar[bool] = False
    requires_strong_view: ClassVar[bool] = False
    requires_classifier_heads: ClassVar[bool] = False
    # Pre-activation stage maps (`preact_hidden_states`) on both outputs and `context.extra["teacher_bn_stats"]`.
    requires_preactivations: ClassVar[bool] = False
    # Buffers the loss keeps identical on every process itself (e.g. CRD's memory banks, updated from gathered
    # features): DDP need not re-broadcast them every step.
    rank_synchronized_buffers: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[PaperRef | None] = None

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())

    def hparams(self) -> dict[str, Any]:
        """The constructor's keyword arguments as resolved (defaults applied), for logs and model cards."""
        return dict(getattr(self, "_hparams", {}))


def check_positive(name: str, value: float, loss_key: str) -> None:
    if not value > 0:
        raise ValueError(f"{loss_key}: `{name}` must be > 0, got {value!r}. Pass a positive value.")


def check_non_negative(name: str, value: float, loss_key: str) -> None:
    if not value >= 0:
        raise ValueError(f"{loss_key}: `{name}` must be >= 0, got {value!r}. Pass zero or a positive value.")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: a `ModelOutput` with `.logits`, a mapping, a tuple or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if logits is None:
        raise ValueError(f"Cannot find logits in a model output of type {type(output).__name__}.")
    return logits
