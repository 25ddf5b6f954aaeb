"""AT: Zagoruyko & Komodakis, attention transfer on spatial attention maps."""

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
    check_positive,
)
from hfkd.losses.registry import register_loss


def attention_map(feats: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(B, H·W) spatial attention: the channel mean of |f|^p, flattened and L2-normalised per sample."""
    return F.normalize(feats.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@without_autocast
def at_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], *, p: float = 2.0
) -> torch.Tensor:
    """Σ_stages mean((A_s − A_t)²) over the batch and the positions, with A = `attention_map(f, p)`.

    A pair of maps with different spatial sizes is first adaptive-average-pooled to the smaller one.
    """
    check_positive("p", p, "at")
    total = 0.0
    for student, teacher in feature_pairs(student_feats, teacher_feats, "at"):
        student, teacher = pool_to_common_size(student, teacher)
        total = total + (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()
    return total


@register_loss("at")
class ATLoss(DistillationLoss):
    """Attention transfer: match the L2-normalised spatial attention maps of several stages.

    Paper: Zagoruyko, Komodakis, *Paying More Attention to Attention: Improving the Performance of Convolutional
    Neural Networks via Attention Transfer*, ICLR 2017, arXiv:1612.03928

    Objective: per selected stage, A(f) = vec(mean_c |f_c|^p) / ‖vec(mean_c |f_c|^p)‖₂ (the paper's F^p_mean with
    p = `p`); L = Σ_stages mean_{b, position} (A(f_s) − A(f_t))², times `feat_weight` (the paper's β = 1000; the
    squared difference averaged over samples and positions is the authors' code). Channel counts may differ.
    Where the spatial sizes differ, the larger map is adaptive-average-pooled to the smaller one: a student map
    larger than the teacher's is pooled to the teacher's size, and a smaller student map is never upsampled; the
    teacher is pooled down to it instead, as in mdistiller. The |·| is the paper's; on post-ReLU maps it changes
    nothing, and it keeps non-integer p defined on signed features such as ViT tokens.

    Reproduces mdistiller's `AT.py`: `stages="1:"` is its `feats[1:]` (every stage, not the stem), p=2 and
    `feat_weight=1000` its defaults, so with `distill_ce_weight=1.0` (its CE_WEIGHT) and `distill_weight=1.0`
    the trainer's total equals mdistiller's `loss_ce + loss_kd`. Per-sample loss: it does not depend on how the
    batch is composed.

    Args:
        p (`float`, *optional*, defaults to `2.0`):
            Exponent p of the attention map; must be > 0.
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Which hidden states to match, indexed as in `hfkd.features` (0 is the stem, negatives count from the
            end); student and teacher must give the same number of maps.
        feat_weight (`float`, *optional*, defaults to `1000.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the AT loss) and `at` (the unweighted AT loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title=(
            "Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks via "
            "Attention Transfer"
        ),
        authors="Sergey Zagoruyko, Nikos Komodakis",
        venue="ICLR 2017",
        arxiv_id="1612.03928",
        bibtex=(
            "@inproceedings{zagoruyko2017attention,\n"
            "  title={Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks"
            " via Attention Transfer},\n"
            "  author={Zagoruyko, Sergey and Komodakis, Nikos},\n"
            "  booktitle={International Conference on Learning Representations},\n"
            "  year={2017}\n"
            "}"
        ),
    )

    def __init__(self, *, p: float = 2.0, stages: StageSpec = "1:", feat_weight: float = 1000.0) -> None:
        super().__init__()
        check_positive("p", p, "at")
        check_stages(stages, "at")
        check_non_negative("feat_weight", feat_weight, "at")
        self.p, self.stages, self.feat_weight = float(p), stages, float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = at_loss(select_features(student, self.stages), select_features(teacher, self.stages), p=self.p)
        return {"loss": self.feat_weight * value, "at": value.detach()}
