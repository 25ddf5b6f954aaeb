"""Image classification: the task hfkd started with. The cross-entropy is the trainer's (unlabelled samples left
out, soft targets under Mixup/CutMix, label smoothing); evaluation keeps each image's top-5 classes and scores
top-1 and top-5 accuracy with the metric module shipped in `hfkd.metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hfkd.losses import logits_of
from hfkd.metrics import compute_accuracy_metrics, top_k_indices
from hfkd.tasks.base import CLASSIFICATION, Task


class ClassificationTask(Task):
    name = CLASSIFICATION
    pipeline_tag = "image-classification"
    model_suffix = "ForImageClassification"
    auto_class = "AutoModelForImageClassification"
    metric = "accuracy"
    card_metrics = (("accuracy", "Top-1 (%)"), ("top5_accuracy", "Top-5 (%)"))
    mapping_names = "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"
    extra_model_types = frozenset({"timm_wrapper"})

    def task_loss(self, outputs: Any, labels: Any, cross_entropy: Callable) -> torch.Tensor:
        return cross_entropy(logits_of(outputs), labels)

    def count_labelled(self, labels: Any, size: int) -> torch.Tensor | int:
        """Samples with a label >= 0 (a negative label marks an unlabelled sample); every sample under soft
        targets (Mixup, CutMix)."""
        if labels is None:
            return 0
        if labels.is_floating_point() and labels.ndim == 2:
            return size
        return (labels >= 0).sum()

    def reduce(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        return top_k_indices(logits), labels

    def metrics(self) -> Callable[..., dict[str, float]]:
        return compute_accuracy_metrics
