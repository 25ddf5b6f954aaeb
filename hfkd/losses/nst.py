"""NST: Huang & Wang, neuron selectivity transfer through a polynomial-kernel MMD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_functional import check_stages, feature_pairs, pool_to_common_size, without_autocast
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


def _mean_poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # K(u, v) = (uᵀv)² between every channel of a and every channel of b, averaged over B·C_a·C_b.
    return (a @ b.mT).pow(2).mean()


@without_autocast
def nst_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_stages squared MMD with the kernel (uᵀv)² between the student's and the teacher's channel maps.

    Per stage (after pooling the larger map to the smaller size): each channel's flattened spatial map is
    L2-normalised, then L = mean K(t, t) + mean K(s, s) − 2·mean K(s, t), each mean over the batch and all
    channel pairs of the sample.
    """
    total = 0.0
    for student, teacher in feature_pairs(student_feats, teacher_feats, "nst"):
        student, teacher = pool_to_common_size(student, teacher)
        student = F.normalize(student.flatten(2), dim=2)
        teacher = F.normalize(teacher.flatten(2), dim=2)
        mmd = _mean_poly_kernel(teacher, teacher) + _mean_poly_kernel(student, student)
        total = total + mmd - 2 * _mean_poly_kernel(student, teacher)
    return total


@register_loss("nst")
class NSTLoss(DistillationLoss):
    """Neuron selectivity transfer: match the distributions of channel activation maps with a kernel MMD.

    Paper: Huang, Wang, *Like What You Like: Knowledge Distill via Neuron Selectivity Transfer*, arXiv 2017,
    arXiv:1707.01219

    Objective: per selected stage and sample, the C channels' spatial maps f_c ∈ R^{HW} are L2-normalised and
    treated as samples of two distributions; L = Σ_stages mean_b [mean_{i,i'} k(t_i, t_i') + mean_{j,j'}
    k(s_j, s_j') − 2 mean_{i,j} k(s_j, t_i)] with the paper's polynomial kernel k(u, v) = (uᵀv)² (d = 2, c = 0),
    times `feat_weight` (the paper's weight λ on the MMD term). Channel counts may differ. Where the spatial
    sizes differ, the larger map is adaptive-average-pooled to the smaller one (a larger student map to the
    teacher's size; a smaller student map is not upsampled, the teacher is pooled down instead, as in
    mdistiller). The MMD is computed within each sample, so the loss does not depend on how the batch is
    composed.

    Reproduces mdistiller's `NST.py`: `stages="1:"` is its `feats[1:]` and `feat_weight=50` its FEAT_WEIGHT, so
    with `distill_ce_weight=1.0` (its CE_WEIGHT) and `distill_weight=1.0` the trainer's total equals mdistiller's.

    Args:
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Which hidden states to match (0 is the stem, negatives count from the end); student and teacher must
            give the same number of maps.
        feat_weight (`float`, *optional*, defaults to `50.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the NST loss) and `nst` (the unweighted NST loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
        authors="Zehao Huang, Naiyan Wang",
        venue="arXiv 2017",
        arxiv_id="1707.01219",
        bibtex=(
            "@article{huang2017like,\n"
            "  title={Like What You Like: Knowledge Distill via Neuron Selectivity Transfer},\n"
            "  author={Huang, Zehao and Wang, Naiyan},\n"
            "  journal={arXiv preprint arXiv:1707.01219},\n"
            "  year={2017}\n"
            "}"
        ),
    )

    def __init__(self, *, stages: StageSpec = "1:", feat_weight: float = 50.0) -> None:
        super().__init__()
        check_stages(stages, "nst")
        check_non_negative("feat_weight", feat_weight, "nst")
        self.stages, self.feat_weight = stages, float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = nst_loss(select_features(student, self.stages), select_features(teacher, self.stages))
        return {"loss": self.feat_weight * value, "nst": value.detach()}
