"""KDSVD: Lee, Kim & Song, distillation of the relations between stages' leading singular vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_functional import (
    check_stages,
    feature_pairs,
    pool_to_common_size,
    top_right_singular_vectors,
    without_autocast,
)
from hfkd.losses._feature_maps import StageSpec, select_features
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    DistillationLoss,
    DistillBatch,
    LossNeeds,
    PaperRef,
    check_non_negative,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"kdsvd: `k` (singular vectors per stage) must be an integer >= 1, got {k!r}.")


def _canonical_sign(vectors: torch.Tensor) -> torch.Tensor:
    # A singular vector's sign is arbitrary (LAPACK and cuSOLVER may differ) and the RBF terms depend on it, so
    # each teacher vector is flipped to make its largest-magnitude entry positive: the loss becomes well defined.
    peak = vectors.gather(-2, vectors.abs().argmax(dim=-2, keepdim=True))
    return vectors * torch.where(peak < 0, -1.0, 1.0)


def _align_to_teacher(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor) -> torch.Tensor:
    # For each teacher vector, the student vector with the largest |cosine|, with the cosine's sign (mdistiller's
    # align_rsv); the selection is a constant matrix for the backward pass.
    with torch.no_grad():
        cosine = student_vectors.mT @ teacher_vectors
        best = cosine.abs().amax(dim=-2, keepdim=True)
        selection = torch.where(cosine.abs() == best, cosine.sign(), 0.0)
    return student_vectors @ selection


def _rbf(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    # Entry-wise between every component of a stage's vector and every component of the previous stage's one.
    return torch.exp(-(current.unsqueeze(2) - previous.unsqueeze(1)).pow(2) / 8)


@without_autocast
def kdsvd_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], *, k: int = 1
) -> torch.Tensor:
    """Σ over consecutive stage pairs of Σ (rbf_s − rbf_t)², divided by B; see `KDSVDLoss` for the steps."""
    _check_k(k)
    pairs = feature_pairs(student_feats, teacher_feats, "kdsvd")
    if len(pairs) < 2:
        raise UsageError("kdsvd relates consecutive stages and needs at least two; choose `stages` such as '1:'.")
    total, previous = 0.0, None
    for student, teacher in pairs:
        if student.shape[-1] != teacher.shape[-1]:
            # Right singular vectors live in R^W: maps of different widths are pooled to the smaller size first,
            # as AT does (mdistiller's pairs always match; this extends KDSVD to e.g. ViT-to-CNN pairs).
            student, teacher = pool_to_common_size(student, teacher)
        teacher_vectors, teacher_values = top_right_singular_vectors(teacher.flatten(1, 2), k)
        if teacher_vectors.shape[-1] < k:
            raise UsageError(
                f"kdsvd: a teacher map of shape {tuple(teacher.shape)} has fewer than k={k} singular vectors."
            )
        teacher_vectors = _canonical_sign(teacher_vectors)
        student_vectors, _ = top_right_singular_vectors(student.flatten(1, 2), k + 3)
        student_vectors = _align_to_teacher(student_vectors, teacher_vectors)
        # Both sides are scaled by the teacher's leading singular values, L2-normalised (all ones for k=1).
        scale = F.normalize(teacher_values, dim=-1).unsqueeze(-2)
        student_vectors, teacher_vectors = student_vectors * scale, teacher_vectors * scale
        if previous is not None:
            squared = (_rbf(student_vectors, previous[0]) - _rbf(teacher_vectors, previous[1])).pow(2)
            total = total + torch.where(squared.isfinite(), squared, 0.0).sum()
        previous = (student_vectors, teacher_vectors)
    return total / pairs[0][0].shape[0]


@register_loss("kdsvd")
class KDSVDLoss(DistillationLoss):
    """KDSVD: match how the leading singular vectors of consecutive stages relate to each other.

    Paper: Lee, Kim, Song, *Self-supervised Knowledge Distillation Using Singular Value Decomposition*, ECCV 2018,
    arXiv:1807.06819

    Objective, as mdistiller's `KDSVD.py` computes it: each selected (B, C, H, W) map is viewed as B matrices of
    shape (C·H, W) and decomposed by SVD (float32, float64 for float64 input). The teacher keeps its `k` leading
    right singular vectors v_t (in R^W), the student its k + 3; for each teacher vector the student vector with
    the largest |cosine| is taken, multiplied by that cosine's sign. Both are scaled by the teacher's k leading
    singular values, L2-normalised. For every stage after the first, rbf(v, v') = exp(−(v_a − v'_b)² / 8) for all
    entries a of the stage's vectors and b of the previous stage's, per vector index; L = Σ (rbf_s − rbf_t)² / B
    (non-finite terms dropped, as in mdistiller), times `feat_weight`. Channels and heights may differ; paired maps of
    different widths are average-pooled to the smaller size first (an extension: mdistiller's pairs match).
    Computed per sample: the loss does not depend on the batch composition.

    Choices where mdistiller is ambiguous: a singular vector's sign is arbitrary and the loss depends on the
    teacher's signs, so each teacher vector is flipped to make its largest-magnitude entry positive (mdistiller
    takes whatever its SVD backend returns; the values agree whenever those signs agree). The SVD's gradient is
    restricted to the pairs that involve a kept vector (see `top_right_singular_vectors`), so zero columns in a
    post-ReLU map no longer turn it into NaN; elsewhere it is the SVD's own gradient.

    `stages="1:"` is mdistiller's `feats[1:]`, k=1 its K and `feat_weight=1` its FEAT_WEIGHT, so with
    `distill_ce_weight=1.0` (its CE_WEIGHT) and `distill_weight=1.0` the trainer's total equals mdistiller's.

    Args:
        k (`int`, *optional*, defaults to `1`):
            Number of teacher singular vectors per stage; must be >= 1.
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Which hidden states to use, at least two (0 is the stem, negatives count from the end); student and
            teacher must give the same number of maps.
        feat_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the KDSVD loss) and `kdsvd` (the unweighted KDSVD loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Self-supervised Knowledge Distillation Using Singular Value Decomposition",
        authors="Seung Hyun Lee, Dae Ha Kim, Byung Cheol Song",
        venue="ECCV 2018",
        arxiv_id="1807.06819",
        bibtex=(
            "@inproceedings{lee2018self,\n"
            "  title={Self-supervised Knowledge Distillation Using Singular Value Decomposition},\n"
            "  author={Lee, Seung Hyun and Kim, Dae Ha and Song, Byung Cheol},\n"
            "  booktitle={Proceedings of the European Conference on Computer Vision (ECCV)},\n"
            "  year={2018}\n"
            "}"
        ),
    )

    def __init__(self, *, k: int = 1, stages: StageSpec = "1:", feat_weight: float = 1.0) -> None:
        super().__init__()
        _check_k(k)
        check_stages(stages, "kdsvd")
        check_non_negative("feat_weight", feat_weight, "kdsvd")
        self.k, self.stages, self.feat_weight = k, stages, float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = kdsvd_loss(select_features(student, self.stages), select_features(teacher, self.stages), k=self.k)
        return {"loss": self.feat_weight * value, "kdsvd": value.detach()}
