"""Dense: a student backbone's last feature map, projected by a 1×1 conv, matched to a foundation model's patch
tokens on their grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfkd.losses._feature_functional import without_autocast
from hfkd.losses._image_features import check_distance, context_sizes, feature_distance, image_features
from hfkd.losses.base import (
    IMAGE_FEATURE_EXTRACTION,
    DistillationLoss,
    DistillBatch,
    LossContext,
    LossNeeds,
    check_non_negative,
)
from hfkd.losses.embed import FUNCTION_MATCHING
from hfkd.losses.registry import register_loss


@without_autocast
def dense_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, *, distance: str = "cosine") -> torch.Tensor:
    """mean over the batch and the teacher's grid positions of d(ŝ(i, j), t(i, j)), where ŝ is the already
    projected student map (B, C, h_s, w_s) resized bilinearly (align_corners=False) to the teacher's (h_t, w_t) and
    t the teacher's map (B, C, h_t, w_t); d is 1 − cos over the channels (`"cosine"`) or torch's MSE of the
    channel-normalised vectors (`"mse"`, mean over the channels too)."""
    if student_map.shape[:2] != teacher_map.shape[:2]:
        raise ValueError(
            f"dense: the projected student map {tuple(student_map.shape)} and the teacher map "
            f"{tuple(teacher_map.shape)} must agree in batch and channels."
        )
    student_map = student_map.float() if student_map.dtype != torch.float64 else student_map
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        student_map = F.interpolate(student_map, size=teacher_map.shape[-2:], mode="bilinear", align_corners=False)
    return feature_distance(student_map, teacher_map, distance, dim=1).mean()


@register_loss("dense")
class DenseLoss(DistillationLoss):
    """Label-free distillation of a foundation model's patch features (DINOv2's patch tokens) into a student map.

    Paper: Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, *Knowledge distillation: A good teacher is patient and
    consistent*, CVPR 2022, arXiv:2106.05237 (function matching: both models on the same augmented, mixed view)

    Objective: L = mean_{b, i, j} d(R(P f_s)_b(i, j), f_t,b(i, j)), where f_s is the student backbone's last feature
    map (C_s, h_s, w_s), P a trainable 1×1 conv to the teacher's C_t channels (saved in
    `distill_adapters.safetensors`), R the bilinear resize (align_corners=False) to the teacher's patch grid
    (h_t, w_t), and f_t the teacher's patch tokens on that grid; d is 1 − cos over the channels (`"cosine"`) or
    torch's MSE of the channel-normalised vectors (`"mse"`). LightlyTrain's v2 and v3 match a student map to the
    teacher's grid the same way (head, then bilinear resize, normalised features). No labels are read.

    Args:
        distance (`str`, *optional*, defaults to `"cosine"`):
            `"cosine"` or `"mse"`.
        loss_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (its weight as `--feature_loss dense`; as the run's `--loss`, `distill_weight`
            weighs it too).

    Returns:
        `dict` with `loss` (`loss_weight` times the loss) and `dense` (the unweighted loss).
    """

    needs = LossNeeds(image_features=True)
    tasks = frozenset({IMAGE_FEATURE_EXTRACTION})
    paper = FUNCTION_MATCHING

    def __init__(self, *, distance: str = "cosine", loss_weight: float = 1.0, context: LossContext) -> None:
        super().__init__()
        self.distance = check_distance(distance, "dense")
        check_non_negative("loss_weight", loss_weight, "dense")
        self.loss_weight = float(loss_weight)
        _, _, student_shape, teacher_shape = context_sizes(context, "dense")
        self.context = context  # the probed sizes, for a feature loss built beside this one
        self.projection = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student, teacher = image_features(student, "student", "dense"), image_features(teacher, "teacher", "dense")
        projected = self.projection(student.feature_map.to(self.projection.weight.dtype))
        value = dense_loss(projected, teacher.feature_map, distance=self.distance)
        return {"loss": self.loss_weight * value, "dense": value.detach()}
