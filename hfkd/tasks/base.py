"""The task of a run: what differs between image classification, semantic segmentation and object detection.

The trainer, the teachers' evaluation, the card and the command line ask their run's `Task` and never branch on its
name. A task says:

- which models it trains (`model_suffix`, the end of their transformers class name) and how it is named on the Hub
  (`pipeline_tag`);
- its task loss (`task_loss`): classification computes the cross-entropy itself (unlabelled samples, soft targets);
  segmentation and detection pass `labels` to the student (`model_loss`), whose own loss is the task loss
  (per-pixel CE with the ignore index; the detector's matching and box losses), as transformers' example scripts
  train them;
- how a distillation loss sees both models' outputs (`align`: dense logits of other sizes resized) and which pixels
  it averages over (`pixel_mask`);
- how evaluation reduces a batch before anything is gathered (`reduce`: top-5 class indices, per-image pixel counts)
  and the metrics of the reduced batches (`metrics`), whose headline is `metric` (`eval_<metric>` in the files).

A label-free task (`label_free`: image-feature-extraction, `hfkd.tasks.features`) distils between backbones: no task
loss, no label space, its evaluation the distillation loss and a k-NN of the embeddings (`watched`: what of an
output the non-finite check and evaluation read).

The tasks hfkd trains are listed in `hfkd.tasks.registry`, which builds one by name (`get_task`) and reads a model's
task from its config (`task_of_config`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from hfkd.data.batch import LABELS, student_inputs
from hfkd.losses import logits_of
from hfkd.losses.base import IMAGE_CLASSIFICATION, IMAGE_FEATURE_EXTRACTION, OBJECT_DETECTION, SEMANTIC_SEGMENTATION

# The task names are the losses' (a loss declares the tasks it serves): defined once, in hfkd.losses.base.
CLASSIFICATION, SEGMENTATION, DETECTION = IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION, OBJECT_DETECTION
FEATURES = IMAGE_FEATURE_EXTRACTION
TASK_NAMES = (CLASSIFICATION, SEGMENTATION, DETECTION, FEATURES)
# The label-free task's losses (hfkd.tasks.features), as its --loss and as its --feature_loss.
FEATURE_LOSSES = ("embed", "dense")
# The losses with a form for each detector family (hfkd.tasks.detection): DETR's matched queries, Faster R-CNN's
# sampled RoIs (the teacher's box head run on the student's), RetinaNet's sigmoid scores per level; the neck (FPN)
# losses serve the torchvision detectors, as the run's loss or as its `--feature_loss`.
NECK_LOSSES = ("mimic", "pkd", "cwd")
DETECTOR_LOSSES = {
    "detr": ("kd", "dist"),
    "faster_rcnn": ("kd", "dist", "dkd", *NECK_LOSSES),
    "retinanet": ("dist", *NECK_LOSSES),
}
DETECTION_LOSSES = tuple(dict.fromkeys(key for keys in DETECTOR_LOSSES.values() for key in keys))


class Task:
    """What a run's task decides (see the module docstring). Subclasses set the class attributes and implement
    `task_loss`, `reduce` and `metrics`."""

    name: ClassVar[str] = ""
    pipeline_tag: ClassVar[str] = ""
    model_suffix: ClassVar[str] = ""
    auto_class: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    # (metric key, column title) of the card's results table, headline first.
    card_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    model_loss: ClassVar[bool] = False
    # The task loss as the card's objective names it (`loss = w × CE + w' × KD`).
    task_loss_name: ClassVar[str] = "CE"
    # transformers' table of the model types its Auto class builds for this task (transformers.models.auto).
    mapping_names: ClassVar[str] = ""
    extra_model_types: ClassVar[frozenset[str]] = frozenset()
    # Both models are backbones without a head and no labels are needed (image-feature-extraction): the teacher loads
    # as a backbone, no label space is checked, Mixup mixes images only, evaluation runs the distillation loss.
    label_free: ClassVar[bool] = False

    @classmethod
    def builds(cls, model_type: str | None) -> bool:
        """Whether this task's Auto class builds a model of `model_type` (a checkpoint of another task of that family,
        say an ImageNet `nvidia/mit-b0`, then initialises its encoder, as transformers' example scripts do)."""
        from transformers.models.auto import modeling_auto

        return model_type in getattr(modeling_auto, cls.mapping_names, {}) or model_type in cls.extra_model_types

    def __init__(self, *, id2label: Mapping[int, str] | None = None, ignore_index: int = -100, **options: Any):
        self.id2label = dict(id2label or {})
        self.ignore_index = ignore_index

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What the student's forward takes from `batch` (and the labels when it computes the task loss)."""
        inputs = student_inputs(batch)
        if self.model_loss and batch.get(LABELS) is not None:
            inputs[LABELS] = batch[LABELS]
        return inputs

    def task_loss(self, outputs: Any, labels: Any, cross_entropy: Callable) -> torch.Tensor:
        raise NotImplementedError

    def count_labelled(self, labels: Any, size: int) -> torch.Tensor | int:
        """What the task loss of a micro-batch averages over (gradient accumulation weighs micro-batches by it)."""
        return size if labels is not None else 0

    def align(self, student_output: Any, teacher_output: Any, labels: Any = None) -> tuple[Any, Any]:
        """Both outputs as a distillation loss compares them (classification: as they are)."""
        return student_output, teacher_output

    def pixel_mask(self, labels: Any, teacher_output: Any) -> torch.Tensor | None:
        """The pixels a dense loss averages over, at the compared logits' resolution (`None`: every one)."""
        return None

    def teacher_labels(self, inputs: dict[str, Any], teacher_output: Any) -> dict[str, Any]:
        """The batch the student trains on, given the teacher's output on it (detection: the teacher's detections
        as the targets of unlabelled images); as it is by default."""
        return inputs

    def distill_loss(self, loss: Any, student: Any, teacher: Any = None) -> Any:
        """The run's distillation loss in this task's form (detection: on matched queries); as built by default."""
        return loss

    def watched(self, output: Any, role: str = "student") -> torch.Tensor:
        """The tensor of a model's training output that the non-finite check watches (the logits)."""
        return logits_of(output)

    def predictions(self, outputs: Any) -> Any:
        """What evaluation keeps of a model's output before `reduce` (the logits; a detector's boxes too)."""
        return logits_of(outputs)

    def teacher_predictions(self, teacher: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """The teacher's `predictions` on an evaluation batch, by metric-name infix (an ensemble adds its members')."""
        return teacher.eval_logits(batch)

    def reduce(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        """(predictions, references) of one evaluation batch, as small as the metrics allow."""
        raise NotImplementedError

    def metrics(self) -> Callable[..., dict[str, float]]:
        """`compute_metrics` over the reduced batches."""
        raise NotImplementedError

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """The trainer's default collator for this task's batches."""
        from hfkd.data.collator import DistillationCollator

        return DistillationCollator()


def ignore_index_of(config: Any, default: int) -> int:
    """The label a model's own loss ignores (`semantic_loss_ignore_index`, UperNet's `loss_ignore_index`)."""
    for name in ("semantic_loss_ignore_index", "loss_ignore_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default
