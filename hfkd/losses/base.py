"""The interface every hfkd loss implements: inputs, context and the loss base class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hfkd.utils.errors import UsageError

IMAGE_CLASSIFICATION = "image-classification"
SEMANTIC_SEGMENTATION = "semantic-segmentation"
OBJECT_DETECTION = "object-detection"
IMAGE_FEATURE_EXTRACTION = "image-feature-extraction"
KNOWN_TASKS = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION, OBJECT_DETECTION, IMAGE_FEATURE_EXTRACTION})
"""The tasks a loss may declare in its `tasks` (the Hugging Face pipeline task names)."""


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


BEYOND_LOGITS = {
    "hidden_states": "feature maps",
    "strong_view": "a strong view",
    "classifier_heads": "the teacher's classifier head",
    "image_features": "a backbone's embedding and feature map",
}
"""The needs a teacher's logits on the batch's view cannot meet, and how messages name them."""


@dataclass(frozen=True)
class LossNeeds:
    """What a loss needs besides both models' logits; each loss declares it once, as its `needs` class attribute.

    The trainer, the teacher and the student module read this one record to decide what to compute:

    - `labels`: `DistillBatch.labels` (an unlabelled sample gets the teacher's top class);
    - `sample_index`: `DistillBatch.sample_index`, the dataset index of every sample;
    - `hidden_states`: both outputs carry `hidden_states` (and `LossContext` the probed feature shapes);
    - `preactivations`: both outputs also carry `preact_hidden_states` (maps before each stage's last ReLU) and
      `LossContext.teacher_bn_stats` the teacher's BN before those ReLUs;
    - `strong_view`: `DistillBatch.student_strong` / `teacher_strong`, both models on a strongly augmented view;
    - `classifier_heads`: `LossContext.student_head` / `teacher_head`, each model's head as a function of a map;
    - `distillation_head`: a student with a distillation head besides its class head (DeiT's distillation token:
      transformers' `*ForImageClassificationWithTeacher`, timm's distilled DeiTs, trained in their distilled mode),
      whose output carries both heads' logits, `cls_logits` and `distillation_logits` (`logits`: their mean, what
      evaluation scores); a student without one is refused before training;
    - `image_features`: both outputs as `ImageFeatures` (a backbone's global embedding and last feature map; the
      image-feature-extraction task reads them off both models), and `LossContext` their probed sizes.
    """

    labels: bool = False
    sample_index: bool = False
    hidden_states: bool = False
    preactivations: bool = False
    strong_view: bool = False
    classifier_heads: bool = False
    distillation_head: bool = False
    image_features: bool = False

    def beyond_logits(self) -> list[str]:
        """What of the teacher these needs ask for besides its logits on the batch's view (`BEYOND_LOGITS`): what a
        teacher cache, which stores logits only, cannot serve."""
        return [what for field_name, what in BEYOND_LOGITS.items() if getattr(self, field_name)]

    def __post_init__(self) -> None:
        if self.preactivations and not self.hidden_states:
            raise UsageError("LossNeeds(preactivations=True) also needs hidden_states=True (the probed shapes).")


@dataclass
class LossContext:
    """What a loss may need to know before training starts: class count, dataset size, and what its `needs` ask
    for: feature shapes, the teacher's BN statistics, the models' classifier heads."""

    num_classes: int | None = None
    dataset_size: int | None = None
    student_feature_shapes: list[tuple[int, ...]] | None = None
    teacher_feature_shapes: list[tuple[int, ...]] | None = None
    student_head: Any = None
    teacher_head: Any = None
    # (bias, |weight|) of the teacher's BN before each pre-activation map's ReLU, stem first (`needs.preactivations`).
    teacher_bn_stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    # `needs.image_features`: each backbone's global embedding size D; its last feature map's (C, h, w) is the one
    # entry of `student_feature_shapes` / `teacher_feature_shapes`.
    student_embedding_dim: int | None = None
    teacher_embedding_dim: int | None = None


@dataclass
class DistillBatch:
    """Per-step inputs besides the two model outputs.

    `epoch` is the trainer's fractional, 0-based epoch (`TrainerState.epoch`); `sample_index` holds dataset indices
    (`needs.sample_index`); `student_strong` and `teacher_strong` are both models' outputs on a strongly augmented
    view of the batch (`needs.strong_view`). `cross_entropy(logits)` is the run's cross-entropy of any student logits
    against the batch's true labels (label smoothing applied, unlabelled samples left out), `None` without labels:
    a loss whose method adds CE terms (MLKD's CE on the strong view) returns them under `"ce"`. `pixel_mask` is a
    (B, H, W) bool at the resolution of the student's dense logits, True at the pixels a dense loss averages over
    (not ignored by the labels); `None` for classification, and when every pixel counts.
    """

    labels: torch.Tensor | None = None
    epoch: float = 0.0
    sample_index: torch.Tensor | None = None
    student_strong: Any = None
    teacher_strong: Any = None
    cross_entropy: Callable[[torch.Tensor], torch.Tensor] | None = None
    pixel_mask: torch.Tensor | None = None


def loss_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Loss math runs in float32, or float64 when the inputs are float64."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class DistillationLoss(nn.Module):
    """Base class of every registered loss.

    Subclasses implement `forward(student, teacher, batch)` by calling their pure loss function, and return
    `{"loss": scalar, <name>: component, ...}`, every value averaged over the samples of the micro-batch. The trainer
    weights `loss` with `distill_weight` and logs the components as `distill/<name>`. One key is reserved: `"ce"`,
    cross-entropy terms of the method itself (built with `batch.cross_entropy`), which the trainer adds to the
    student's CE and weights with `distill_ce_weight`; a loss with `replaces_task_loss` returns under `"ce"` the
    whole task loss of its method (DeiT: the class head's CE, not the CE of the averaged heads' `logits`), and the
    trainer adds no CE of its own. What the loss needs besides the logits is its `needs`; the tasks whose model
    outputs it reads (`KNOWN_TASKS`: classifier logits, dense (B, C, H, W) logits, a detector's neck features) are
    its `tasks`.
    """

    key: ClassVar[str] = ""
    needs: ClassVar[LossNeeds] = LossNeeds()
    replaces_task_loss: ClassVar[bool] = False
    # How the model card writes the objective's two terms when the loss weighs them itself (DeiT's (1 − α) and α);
    # `None`: the task loss's name and the loss key.
    card_terms: ClassVar[tuple[str, str] | None] = None
    tasks: ClassVar[frozenset[str]] = frozenset({IMAGE_CLASSIFICATION})
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
        raise UsageError(f"{loss_key}: `{name}` must be > 0, got {value!r}. Pass a positive value.")


def check_non_negative(name: str, value: float, loss_key: str) -> None:
    if not value >= 0:
        raise UsageError(f"{loss_key}: `{name}` must be >= 0, got {value!r}. Pass zero or a positive value.")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: a `ModelOutput` with `.logits`, a mapping, a tuple or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if logits is None:
        raise UsageError(f"Cannot find logits in a model output of type {type(output).__name__}.")
    return logits
