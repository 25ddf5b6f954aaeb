"""Semantic segmentation as a task: the student's own per-pixel loss, dense logits compared at one resolution, the
ignored pixels left out, and mean IoU from per-image pixel counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.data.batch import IGNORE_INDEX
from hfkd.losses import logits_of
from hfkd.tasks.base import SEGMENTATION, Task
from hfkd.tasks.segmentation.metrics import SegmentationMetrics, pixel_counts
from hfkd.utils.errors import UsageError

LOGITS_SIZES = ("teacher", "labels")


def with_logits(output: Any, **changes: torch.Tensor) -> Any:
    """A copy of a model output with some of its tensors replaced (`logits`, `auxiliary_logits`)."""
    if isinstance(output, torch.Tensor):
        return changes.get("logits", output)
    if isinstance(output, dict):  # ModelOutput is a dict: rebuild it of its own type
        return type(output)(**{**output, **changes})
    raise UsageError(f"Cannot resize the logits of a model output of type {type(output).__name__}.")


def resized(logits: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    if logits is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmentationTask(Task):
    """Semantic segmentation. `logits_size` decides where dense logits of different sizes are compared: `"teacher"`
    (the student's resized to the teacher's, bilinear; the references compare both at output stride 8 without
    resizing, which models of one stride do) or `"labels"` (both resized to the label size)."""

    name = SEGMENTATION
    pipeline_tag = "image-segmentation"
    model_suffix = "ForSemanticSegmentation"
    auto_class = "AutoModelForSemanticSegmentation"
    metric = "mean_iou"
    card_metrics = (
        ("mean_iou", "mIoU (%)"),
        ("mean_accuracy", "mean accuracy (%)"),
        ("overall_accuracy", "pixel accuracy (%)"),
    )
    model_loss = True
    mapping_names = "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES"
    extra_model_types = frozenset({"hfkd_smp"})

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, logits_size: str = "teacher", **options: Any) -> None:
        super().__init__(ignore_index=ignore_index, **options)
        if logits_size not in LOGITS_SIZES:
            raise UsageError(f"--distill_logits_size must be one of {', '.join(LOGITS_SIZES)}, got {logits_size!r}.")
        self.logits_size = logits_size

    def task_loss(self, outputs: Any, labels: Any, cross_entropy: Callable) -> torch.Tensor:
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if loss is None:
            raise UsageError(
                f"The student ({type(outputs).__name__}) returned no loss for the batch's labels: a segmentation "
                "student computes its per-pixel loss from `labels` (transformers' *ForSemanticSegmentation models do)."
            )
        return loss

    def count_labelled(self, labels: Any, size: int) -> torch.Tensor | int:
        """The labelled pixels: the student's loss is their mean."""
        if labels is None:
            return 0
        return ((labels >= 0) & (labels != self.ignore_index)).sum()

    def _size(self, teacher_output: Any, labels: Any) -> tuple[int, int]:
        if self.logits_size == "labels" and labels is not None:
            return tuple(labels.shape[-2:])
        return tuple(logits_of(teacher_output).shape[-2:])

    def align(self, student_output: Any, teacher_output: Any, labels: Any = None) -> tuple[Any, Any]:
        size = self._size(teacher_output, labels)
        outputs = []
        for output in (student_output, teacher_output):
            logits = logits_of(output)
            if tuple(logits.shape[-2:]) == size:
                outputs.append(output)
                continue
            changes = {"logits": resized(logits, size)}
            auxiliary = getattr(output, "auxiliary_logits", None)
            if auxiliary is not None:
                changes["auxiliary_logits"] = resized(auxiliary, size)
            outputs.append(with_logits(output, **changes))
        return outputs[0], outputs[1]

    def pixel_mask(self, labels: Any, teacher_output: Any) -> torch.Tensor | None:
        if labels is None:
            return None
        size = self._size(teacher_output, labels)
        if tuple(labels.shape[-2:]) != size:
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        return (labels >= 0) & (labels != self.ignore_index)

    def reduce(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        counts = pixel_counts(logits_of(logits) if not torch.is_tensor(logits) else logits, labels,
                              ignore_index=self.ignore_index)  # fmt: skip
        return counts, torch.zeros(len(counts), device=counts.device)

    def metrics(self) -> Callable[..., dict[str, float]]:
        return SegmentationMetrics(self.id2label)

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from hfkd.tasks.segmentation.data import SegmentationCollator

        return SegmentationCollator(self.ignore_index)
