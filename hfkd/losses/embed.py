"""Embed: a student backbone's pooled features, projected, matched to a foundation model's global embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hfkd.losses._feature_functional import without_autocast
from hfkd.losses._image_features import check_distance, context_sizes, feature_distance, image_features
from hfkd.losses.base import (
    IMAGE_FEATURE_EXTRACTION,
    DistillationLoss,
    DistillBatch,
    LossContext,
    LossNeeds,
    PaperRef,
    check_non_negative,
)
from hfkd.losses.registry import register_loss

FUNCTION_MATCHING = PaperRef(
    title="Knowledge distillation: A good teacher is patient and consistent",
    authors="Lucas Beyer, Xiaohua Zhai, Amélie Royer, Larisa Markeeva, Rohan Anil, Alexander Kolesnikov",
    venue="CVPR 2022",
    arxiv_id="2106.05237",
    bibtex=(
        "@inproceedings{beyer2022knowledge,\n"
        "  title={Knowledge distillation: A good teacher is patient and consistent},\n"
        "  author={Beyer, Lucas and Zhai, Xiaohua and Royer, Am{\\'e}lie and Markeeva, Larisa and Anil, Rohan and "
        "Kolesnikov, Alexander},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
        "  year={2022}\n"
        "}"
    ),
    code_url="https://github.com/google-research/big_vision",
)
"""Function matching: teacher and student on the same augmented (and mixed) view, the label-free losses' recipe."""


@without_autocast
def embed_loss(
    student_embeds: torch.Tensor, teacher_embeds: torch.Tensor, *, distance: str = "cosine"
) -> torch.Tensor:
    """mean over the batch of d(p(s), t) for already projected student embeddings p(s) (B, D) and the teacher's
    t (B, D): d = 1 − cos (`"cosine"`), or torch's MSE of the L2-normalised vectors (`"mse"`, mean over D too)."""
    if student_embeds.shape != teacher_embeds.shape:
        raise ValueError(
            f"embed: the projected student embeddings {tuple(student_embeds.shape)} and the teacher's "
            f"{tuple(teacher_embeds.shape)} must have the same shape."
        )
    return feature_distance(student_embeds, teacher_embeds, distance, dim=-1).mean()


@register_loss("embed")
class EmbedLoss(DistillationLoss):
    """Label-free distillation of a foundation model's global image embedding (DINOv2's CLS, CLIP's pooled output).

    Paper: Beyer, Zhai, Royer, Markeeva, Anil, Kolesnikov, *Knowledge distillation: A good teacher is patient and
    consistent*, CVPR 2022, arXiv:2106.05237 (function matching: both models on the same augmented, mixed view)

    Objective: L = mean_b d(W s_b + c, t_b), where s_b is the student backbone's pooled feature (D_s), t_b the
    teacher's global embedding (D_t) and W, c a trainable projection `Linear(D_s, D_t)` (truncated-normal std 0.02,
    as LightlyTrain's distillation heads), trained with the student and saved in `distill_adapters.safetensors`;
    d is 1 − cos (`"cosine"`) or torch's MSE of the L2-normalised vectors (`"mse"`, which is 2 (1 − cos) / D_t: the
    same direction at another scale). LightlyTrain's v1 matches the same normalised pair through a queue of past
    teacher embeddings; this is the direct form. No labels are read.

    Args:
        distance (`str`, *optional*, defaults to `"cosine"`):
            `"cosine"` or `"mse"`.
        loss_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (its weight as `--feature_loss embed`; as the run's `--loss`, `distill_weight`
            weighs it too).

    Returns:
        `dict` with `loss` (`loss_weight` times the loss) and `embed` (the unweighted loss).
    """

    needs = LossNeeds(image_features=True)
    tasks = frozenset({IMAGE_FEATURE_EXTRACTION})
    paper = FUNCTION_MATCHING

    def __init__(self, *, distance: str = "cosine", loss_weight: float = 1.0, context: LossContext) -> None:
        super().__init__()
        self.distance = check_distance(distance, "embed")
        check_non_negative("loss_weight", loss_weight, "embed")
        self.loss_weight = float(loss_weight)
        student_dim, teacher_dim, _, _ = context_sizes(context, "embed")
        self.context = context  # the probed sizes, for a feature loss built beside this one
        self.projection = nn.Linear(student_dim, teacher_dim)
        nn.init.trunc_normal_(self.projection.weight, std=0.02)
        nn.init.zeros_(self.projection.bias)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student, teacher = image_features(student, "student", "embed"), image_features(teacher, "teacher", "embed")
        projected = self.projection(student.embedding.to(self.projection.weight.dtype))
        value = embed_loss(projected, teacher.embedding, distance=self.distance)
        return {"loss": self.loss_weight * value, "embed": value.detach()}
