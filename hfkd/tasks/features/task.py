"""Image feature extraction as a task: a foundation model's embeddings (DINOv2, CLIP, SigLIP, any backbone) distilled
into a student backbone without labels, the student then fine-tuned elsewhere.

Both models are backbones (no head); the loss compares what `hfkd.models.embeddings` reads off them: `embed` (global
embeddings) and `dense` (feature maps on the teacher's patch grid), the one as `--loss`, the other as `--feature_loss`.
There is no task loss: labels in a training batch are not read. Evaluation runs the distillation loss (`eval_loss`)
and, on a labelled evaluation split, DINO's weighted k-NN top-1 of the student's embeddings (`eval_knn_top1`) and of
the teacher's (`teacher_eval_knn_top1`; `hfkd.tasks.features.knn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses import DistillationLoss, create_loss
from hfkd.losses.base import IMAGE_FEATURE_EXTRACTION
from hfkd.models.embeddings import FeatureReader
from hfkd.tasks.base import FEATURE_LOSSES, Task
from hfkd.tasks.features.distill import FeatureDistillation
from hfkd.tasks.features.knn import knn_metrics
from hfkd.utils.errors import UsageError

__all__ = ["FEATURE_LOSSES", "FeatureExtractionTask"]


class FeatureExtractionTask(Task):
    """See the module docstring. `distill_loss` binds a `FeatureReader` to each model: `align` hands the loss both
    models' `ImageFeatures`, evaluation keeps the student's (and the teacher's) L2-normalised embeddings."""

    name = IMAGE_FEATURE_EXTRACTION
    pipeline_tag = "image-feature-extraction"
    model_suffix = ""  # read from a model's class by `is_backbone_class`, not by a suffix
    auto_class = "AutoModel"
    metric = "knn_top1"
    card_metrics = (("knn_top1", "k-NN top-1 (%)"),)
    task_loss_name = ""
    mapping_names = "MODEL_MAPPING_NAMES"
    label_free = True

    def __init__(
        self, *, feature_loss: str | None = None, feature_loss_kwargs: dict[str, Any] | None = None, **options: Any
    ) -> None:
        options.pop("logits_size", None)
        options.pop("ignore_index", None)
        super().__init__(**options)
        self.feature_loss, self.feature_loss_kwargs = feature_loss, dict(feature_loss_kwargs or {})
        self.readers: dict[str, FeatureReader] = {}

    def task_loss(self, outputs: Any, labels: Any, cross_entropy: Callable) -> None:
        """None: there is no task loss (a batch's labels only score the k-NN evaluation)."""
        return None

    def count_labelled(self, labels: Any, size: int) -> int:
        return 0

    def distill_loss(self, loss: DistillationLoss, student: Any, teacher: Any = None) -> DistillationLoss:
        """The run's loss and `--feature_loss` (built with the sizes the run's loss was probed with), summed; both
        models' readers bound for `align` and evaluation."""
        for reader in self.readers.values():
            reader.close()
        self.readers = {"student": FeatureReader(student)}
        if teacher is not None:
            self.readers["teacher"] = FeatureReader(teacher)
        feature = None
        if self.feature_loss is not None:
            feature = create_loss(self.feature_loss, context=loss.context, **self.feature_loss_kwargs)
            feature = feature.to(next(loss.parameters()).device)  # where the trainer put the run's loss
        return FeatureDistillation(loss, feature)

    def align(self, student_output: Any, teacher_output: Any, labels: Any = None) -> tuple[Any, Any]:
        return self._reader("student")(student_output), self._reader("teacher")(teacher_output)

    def watched(self, output: Any, role: str = "student") -> torch.Tensor:
        """The embedding of a model's output: what the non-finite check watches and evaluation keeps."""
        return self._reader(role)(output).embedding

    def predictions(self, outputs: Any) -> torch.Tensor:
        return self.watched(outputs)

    def teacher_predictions(self, teacher: Any, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = getattr(teacher, "outputs", None)
        if outputs is None:
            raise UsageError(f"A {type(teacher).__name__} cannot be evaluated on image-feature-extraction.")
        return {"": self.watched(outputs(batch), "teacher")}

    def reduce(self, logits: Any, labels: Any) -> tuple[torch.Tensor, Any]:
        """Each image's L2-normalised embedding (float32) and its label."""
        return F.normalize(logits.float(), dim=-1), labels

    def metrics(self) -> Callable[..., dict[str, float]]:
        return knn_metrics()

    def _reader(self, role: str) -> FeatureReader:
        if role not in self.readers:
            raise UsageError(
                f"image-feature-extraction reads the {role}'s features once the trainer has built the loss for both "
                "models (DistillationTrainer does); this task needs a teacher."
            )
        return self.readers[role]
