"""FitNet: Romero et al., hint-based training through a learned regressor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hfkd.losses._adapters import ConvReg, pick_maps, require_feature_shapes, resolve_stage_pairs
from hfkd.losses._feature_functional import check_stages, feature_pairs
from hfkd.losses._feature_maps import StageSpec, feature_maps
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    DistillationLoss,
    DistillBatch,
    LossContext,
    LossNeeds,
    PaperRef,
    check_non_negative,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def fitnet_loss(
    student_regressed: torch.Tensor | Sequence[torch.Tensor], teacher_feats: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """mean((r(f_s) − f_t)²) over every element, summed over the stages: the hint loss on already regressed student
    maps (one (B, C, H, W) tensor per stage, or a single tensor for one stage)."""
    if isinstance(student_regressed, torch.Tensor):
        student_regressed, teacher_feats = [student_regressed], [teacher_feats]
    total = 0.0
    for student, teacher in feature_pairs(student_regressed, teacher_feats, "fitnet"):
        if student.shape != teacher.shape:
            raise UsageError(
                f"fitnet: the regressed student map {tuple(student.shape)} and the teacher map "
                f"{tuple(teacher.shape)} must have the same shape."
            )
        total = total + (student - teacher).pow(2).mean()
    return total


@register_loss("fitnet")
class FitNetLoss(DistillationLoss):
    """FitNets hint loss: a trainable regressor maps a student stage onto the teacher's, matched by MSE.

    Paper: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, *FitNets: Hints for Thin Deep Nets*, ICLR 2015,
    arXiv:1412.6550

    Objective: L = mean((r(f_s) − f_t)²) summed over the selected stages, times `feat_weight`, where f_s and f_t
    are the student's and teacher's post-activation maps at `stages` / `teacher_stages` (the paper's guided and
    hint layers) and r is the regressor: mdistiller's ConvReg, conv + BN + ReLU, a 3×3 stride-2 conv when the
    student map is twice the teacher's size, a 4×4 stride-2 transposed conv when it is half, and a
    (1 + s_H − t_H)-sized conv when it is at least as large (built from the probed shapes; other sizes raise).

    Reproduces mdistiller's `FitNet.py`: `stages=(2,)` is its HINT_LAYER 2 (index 0 is the stem, as in its
    `feats`), `feat_weight=100` its FEAT_WEIGHT, so `distill_ce_weight=1.0` (its CE_WEIGHT) and
    `distill_weight=1.0` give its total CE + 100·MSE. Deviations: mdistiller trains the whole network at once with
    this loss (as we do) rather than the paper's two-stage hint pre-training; several stages may be listed (one
    regressor each, losses summed), and the kernel rules must hold for both height and width. The regressor's
    BatchNorm makes the loss depend on how the batch is composed.

    Args:
        stages (`str` or `list[int]`, *optional*, defaults to `(2,)`):
            Student hidden states to regress, indexed as in `hfkd.features` (0 is the stem).
        teacher_stages (`str` or `list[int]`, *optional*, defaults to `None`):
            Teacher hidden states they are matched to; `None` uses `stages`.
        feat_weight (`float`, *optional*, defaults to `100.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the hint loss) and `fitnet` (the unweighted hint loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="FitNets: Hints for Thin Deep Nets",
        authors="Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta, Yoshua Bengio",
        venue="ICLR 2015",
        arxiv_id="1412.6550",
        bibtex=(
            "@inproceedings{romero2015fitnets,\n"
            "  title={FitNets: Hints for Thin Deep Nets},\n"
            "  author={Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and\n"
            "          Gatta, Carlo and Bengio, Yoshua},\n"
            "  booktitle={International Conference on Learning Representations},\n"
            "  year={2015}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        stages: StageSpec = (2,),
        teacher_stages: StageSpec = None,
        feat_weight: float = 100.0,
        context: LossContext,
    ) -> None:
        super().__init__()
        check_stages(stages, "fitnet")
        if teacher_stages is not None:
            check_stages(teacher_stages, "fitnet")
        check_non_negative("feat_weight", feat_weight, "fitnet")
        self.feat_weight = float(feat_weight)
        student_shapes, teacher_shapes = require_feature_shapes(context, "fitnet")
        self.counts = (len(student_shapes), len(teacher_shapes))
        self.student_stages, self.teacher_stages = resolve_stage_pairs("fitnet", stages, teacher_stages, *self.counts)
        self.regressors = nn.ModuleList(
            ConvReg(student_shapes[s], teacher_shapes[t]) for s, t in zip(self.student_stages, self.teacher_stages)
        )

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student_feats = pick_maps(feature_maps(student), self.student_stages, self.counts[0], "fitnet", "student")
        teacher_feats = pick_maps(feature_maps(teacher), self.teacher_stages, self.counts[1], "fitnet", "teacher")
        value = fitnet_loss([regressor(s) for regressor, s in zip(self.regressors, student_feats)], teacher_feats)
        return {"loss": self.feat_weight * value, "fitnet": value.detach()}
