"""Distillation between DETR-family detectors: the run's `--loss` (kd or dist) on the classes of the teacher's queries
matched to the student's, with the boxes of the matched pairs and the unmatched student queries as further terms.

`DetrDistillation` wraps the registered loss the run built, takes its hyperparameters (KD's temperature, DIST's β, γ
and τ) and computes `hfkd.losses._detr.detr_distill_loss` on both models' `logits` and `pred_boxes`: Hungarian
matching of the teacher's queries to the student's with the models' own costs (class + L1 + GIoU), KD or DIST on the
matched class scores (softmax with DETR's no-object class, or per-class sigmoid for the focal-loss models: Conditional
and Deformable DETR, RT-DETR, D-FINE), L1 and GIoU on the matched boxes, and the unmatched student queries pushed
to no-object. The terms are logged as `distill/cls`, `distill/box_l1`, `distill/box_giou`, `distill/no_object`.
"""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses import DistillationLoss
from hfkd.losses._detr import detr_distill_loss
from hfkd.losses.base import OBJECT_DETECTION
from hfkd.tasks.base import DETECTOR_LOSSES
from hfkd.utils.errors import UsageError

# The hyperparameters each of the run's losses hands on to its DETR form.
DETR_LOSSES = {"kd": ("temperature",), "dist": ("beta", "gamma", "temperature")}
assert tuple(DETR_LOSSES) == DETECTOR_LOSSES["detr"]


def uses_sigmoid(logits: torch.Tensor, num_labels: int) -> bool:
    """Whether a detector scores classes with a sigmoid each (focal-loss models: one logit per class) rather than a
    softmax with a last no-object class (DETR, YOLOS: one logit more than the classes)."""
    if logits.shape[-1] == num_labels + 1:
        return False
    if logits.shape[-1] == num_labels:
        return True
    raise UsageError(
        f"The detector's logits have {logits.shape[-1]} classes and its config {num_labels} labels: expected "
        f"{num_labels} (sigmoid) or {num_labels + 1} (softmax with no-object)."
    )


class DetrDistillation(DistillationLoss):
    """The run's KD or DIST, in its DETR form (see the module docstring)."""

    tasks = frozenset({OBJECT_DETECTION})

    def __init__(
        self,
        inner: DistillationLoss,
        num_labels: int,
        *,
        box_weight: float = 5.0,
        giou_weight: float = 2.0,
        no_object_weight: float = 1.0,
        score_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if inner.key not in DETR_LOSSES:
            raise UsageError(
                f"--loss {inner.key} has no form for DETR-family detectors; pass --loss "
                f"{' or --loss '.join(DETR_LOSSES)} (matched queries' classes and boxes)."
            )
        self.key = inner.key
        self.num_labels = num_labels
        self.inner_hparams = {name: getattr(inner, name) for name in DETR_LOSSES[inner.key]}
        self.weights = {"box_weight": box_weight, "giou_weight": giou_weight, "no_object_weight": no_object_weight}
        self.score_threshold = score_threshold
        self._hparams = {**inner.hparams(), **self.weights, "score_threshold": score_threshold}

    def forward(self, student: Any, teacher: Any, batch: Any) -> dict[str, torch.Tensor]:
        student_logits, student_boxes = _detections(student, "student")
        teacher_logits, teacher_boxes = _detections(teacher, "teacher")
        terms = detr_distill_loss(
            student_logits, student_boxes, teacher_logits, teacher_boxes, loss=self.key,
            use_sigmoid=uses_sigmoid(student_logits, self.num_labels), score_threshold=self.score_threshold,
            **self.inner_hparams, **self.weights,
        )  # fmt: skip
        return {"loss": terms["loss"], **{name: value.detach() for name, value in terms.items() if name != "loss"}}


def _detections(output: Any, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    logits = getattr(output, "logits", None)
    boxes = getattr(output, "pred_boxes", None)
    if logits is None or boxes is None:
        raise UsageError(
            f"The {role}'s output ({type(output).__name__}) has no `logits` and `pred_boxes`: distillation for object "
            "detection takes DETR-family models (AutoModelForObjectDetection)."
        )
    return logits, boxes
