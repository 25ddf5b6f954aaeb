"""SP: Tung & Mori, similarity-preserving distillation of batch similarity matrices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_functional import check_stages, feature_pairs, without_autocast
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


def similarity_matrix(feats: torch.Tensor) -> torch.Tensor:
    """(B, B) similarity G = Q Qᵀ of the flattened features Q (B, C·H·W), each row L2-normalised."""
    flat = feats.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


@without_autocast
def sp_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_stages ‖G_t − G_s‖_F² / B², with G = `similarity_matrix(f)`; any shapes with the same batch size."""
    total = 0.0
    for student, teacher in feature_pairs(student_feats, teacher_feats, "sp", maps=False):
        batch_size = student.shape[0]
        total = total + (similarity_matrix(teacher) - similarity_matrix(student)).pow(2).sum() / batch_size**2
    return total


@register_loss("sp")
class SPLoss(DistillationLoss):
    """Similarity-preserving distillation: the student reproduces the teacher's sample-to-sample similarities.

    Paper: Tung, Mori, *Similarity-Preserving Knowledge Distillation*, ICCV 2019, arXiv:1907.09682

    Objective: per selected stage, Q is the (B, C·H·W) reshaped activation map and G = row-L2-normalise(Q Qᵀ)
    (B × B); L = Σ_stages ‖G_t − G_s‖_F² / B², times `feat_weight` (the paper's γ). Channel
    counts and spatial sizes may differ, since only the B × B matrices are compared. G relates the samples of the
    micro-batch to each other, so the loss depends on the batch composition by design: the per-device batch size
    changes it.

    Reproduces mdistiller's `SP.py`: `stages=(-1,)` is its `feats[-1]` (the last stage only) and
    `feat_weight=3000` its FEAT_WEIGHT, so with `distill_ce_weight=1.0` (its CE_WEIGHT) and `distill_weight=1.0`
    the trainer's total equals mdistiller's.

    Args:
        stages (`str` or `list[int]`, *optional*, defaults to `(-1,)`):
            Which hidden states to match (0 is the stem, negatives count from the end); student and teacher must
            give the same number of maps.
        feat_weight (`float`, *optional*, defaults to `3000.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the SP loss) and `sp` (the unweighted SP loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Similarity-Preserving Knowledge Distillation",
        authors="Frederick Tung, Greg Mori",
        venue="ICCV 2019",
        arxiv_id="1907.09682",
        bibtex=(
            "@inproceedings{tung2019similarity,\n"
            "  title={Similarity-Preserving Knowledge Distillation},\n"
            "  author={Tung, Frederick and Mori, Greg},\n"
            "  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision},\n"
            "  year={2019}\n"
            "}"
        ),
    )

    def __init__(self, *, stages: StageSpec = (-1,), feat_weight: float = 3000.0) -> None:
        super().__init__()
        check_stages(stages, "sp")
        check_non_negative("feat_weight", feat_weight, "sp")
        self.stages, self.feat_weight = stages, float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = sp_loss(select_features(student, self.stages), select_features(teacher, self.stages))
        return {"loss": self.feat_weight * value, "sp": value.detach()}
