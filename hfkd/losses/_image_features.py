"""What the label-free losses (`embed`, `dense`) compare: a backbone's global embedding and its last feature map.

The image-feature-extraction task reads both off each model's output (`hfkd.models.embeddings`, the one place that
knows every model kind) and hands the losses `ImageFeatures`; the losses never see a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses.base import LossContext
from hfkd.utils.errors import UsageError

DISTANCES = ("cosine", "mse")


@dataclass
class ImageFeatures:
    """A backbone's features of a batch: `embedding` (B, D), its global image embedding, and `feature_map`
    (B, C, h, w), its last feature map (a CNN's last stage, a ViT's patch tokens on their grid)."""

    embedding: torch.Tensor
    feature_map: torch.Tensor


def image_features(output: Any, role: str, key: str) -> ImageFeatures:
    """`output` when it is `ImageFeatures`, else a one-line error that says where they come from."""
    if isinstance(output, ImageFeatures):
        return output
    raise UsageError(
        f"{key}: the {role} output is a {type(output).__name__}, not ImageFeatures. This loss compares backbones' "
        "embeddings and feature maps and serves the image-feature-extraction task (--task image-feature-extraction), "
        "which reads them off both models."
    )


def context_sizes(context: LossContext | None, key: str) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """(student D, teacher D, student map (C, h, w), teacher map (C, h, w)) probed by the trainer, or the fix."""
    probed = context is not None and context.student_embedding_dim and context.teacher_embedding_dim
    if not probed or not context.student_feature_shapes or not context.teacher_feature_shapes:
        raise UsageError(
            f"{key}: this loss sizes its projection from both backbones' features, which the trainer probes on a "
            "training batch. To build it by hand, pass `context=probe_image_context(student, teacher, pixel_values)` "
            "(`hfkd.models.embeddings`)."
        )
    return (
        int(context.student_embedding_dim),
        int(context.teacher_embedding_dim),
        tuple(context.student_feature_shapes[-1]),
        tuple(context.teacher_feature_shapes[-1]),
    )


def check_distance(distance: str, key: str) -> str:
    if distance not in DISTANCES:
        raise UsageError(f"{key}: `distance` must be 'cosine' or 'mse', got {distance!r}.")
    return distance


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, distance: str, dim: int) -> torch.Tensor:
    """Per vector along `dim`: 1 − cos(s, t) (`"cosine"`), or the mean over `dim` of (ŝ − t̂)² with both
    L2-normalised (`"mse"`: torch's MSE on the unit vectors, 2 (1 − cos) / size of `dim`). In float32 or float64;
    the teacher is a target: no gradient flows into it."""
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    student, teacher = student.to(dtype), teacher.detach().to(dtype)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(student, teacher, dim=dim, eps=1e-8)
    student, teacher = F.normalize(student, dim=dim, eps=1e-8), F.normalize(teacher, dim=dim, eps=1e-8)
    return (student - teacher).pow(2).mean(dim=dim)
