"""VID: Ahn et al., variational information distillation (Gaussian likelihood of teacher features)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfkd.losses._adapters import pick_maps, require_feature_shapes, resolve_stage_pairs, vid_regressor
from hfkd.losses._feature_functional import check_stages, feature_pairs, pool_to_common_size
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
    check_positive,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def vid_loss(
    student_mean: torch.Tensor | Sequence[torch.Tensor],
    teacher_feats: torch.Tensor | Sequence[torch.Tensor],
    variance: torch.Tensor | Sequence[torch.Tensor],
) -> torch.Tensor:
    """mean of ½((μ − t)²/σ² + log σ²) over every element, summed over the stages: the Gaussian NLL without its
    ½·log 2π constant.

    `student_mean` is the regressed μ (B, C, H, W), `variance` the per-channel σ² (C,), both already computed: one
    tensor each per stage, or single tensors for one stage.
    """
    if isinstance(student_mean, torch.Tensor):
        student_mean, teacher_feats, variance = [student_mean], [teacher_feats], [variance]
    total = 0.0
    for (mean, teacher), var in zip(feature_pairs(student_mean, teacher_feats, "vid"), variance, strict=True):
        var = var.to(mean.dtype).view(1, -1, 1, 1)
        total = total + (0.5 * ((mean - teacher).pow(2) / var + var.log())).mean()
    return total


@register_loss("vid")
class VIDLoss(DistillationLoss):
    """Variational information distillation: maximise a Gaussian likelihood of the teacher's maps given the student's.

    Paper: Ahn, Hu, Damianou, Lawrence, Dai, *Variational Information Distillation for Knowledge Transfer*,
    CVPR 2019, arXiv:1904.05835

    Objective: per selected stage, the student map (pooled to the teacher's size if larger, or the teacher's pooled
    to the student's) goes through μ(·) = conv1×1–ReLU–conv1×1–ReLU–conv1×1 (mid width = teacher channels);
    σ²_c = softplus(α_c) + `eps` per teacher channel; L = Σ_stages mean ½((μ − t)²/σ² + log σ²), times
    `feat_weight`. α starts at log(exp(`init_pred_var` − eps) − 1), so σ² starts at `init_pred_var`.

    Reproduces mdistiller's `VID.py` (from the authors' code): `stages="1:"` is its `feats[1:]`, EPS 1e-5,
    INIT_PRED_VAR 5, FEAT_WEIGHT 1, CE_WEIGHT 1, so `distill_ce_weight=1.0, distill_weight=1.0` give its total.
    mdistiller keeps α in a Python list that the optimiser never sees, so σ² stays at 5.0 for the whole run; we
    replicate that on purpose (α is a buffer, saved and restored but not trained) so that results are comparable.
    The paper learns the variance: `learn_variance=True` makes α a trainable parameter. The regressors are bias-free
    as in mdistiller.

    Args:
        init_pred_var (`float`, *optional*, defaults to `5.0`):
            Initial variance σ² of every channel; must exceed `eps`.
        eps (`float`, *optional*, defaults to `1e-5`):
            Floor added to the softplus, keeping σ² > 0.
        learn_variance (`bool`, *optional*, defaults to `False`):
            Train α (the paper) instead of keeping σ² at `init_pred_var` (mdistiller).
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Student hidden states, indexed as in `hfkd.features` (0 is the stem).
        teacher_stages (`str` or `list[int]`, *optional*, defaults to `None`):
            Teacher hidden states they are matched to; `None` uses `stages`.
        feat_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the NLL) and `vid` (the unweighted NLL summed over stages).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Variational Information Distillation for Knowledge Transfer",
        authors="Sungsoo Ahn, Shell Xu Hu, Andreas Damianou, Neil D. Lawrence, Zhenwen Dai",
        venue="CVPR 2019",
        arxiv_id="1904.05835",
        bibtex=(
            "@inproceedings{ahn2019variational,\n"
            "  title={Variational Information Distillation for Knowledge Transfer},\n"
            "  author={Ahn, Sungsoo and Hu, Shell Xu and Damianou, Andreas and Lawrence, Neil D. and Dai, Zhenwen},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2019}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
        learn_variance: bool = False,
        stages: StageSpec = "1:",
        teacher_stages: StageSpec = None,
        feat_weight: float = 1.0,
        context: LossContext,
    ) -> None:
        super().__init__()
        check_positive("eps", eps, "vid")
        if not init_pred_var > eps:
            raise UsageError(f"vid: `init_pred_var` must be > eps ({eps}), got {init_pred_var!r}.")
        if not isinstance(learn_variance, bool):
            raise UsageError(f"vid: `learn_variance` must be true or false, got {learn_variance!r}.")
        check_stages(stages, "vid")
        if teacher_stages is not None:
            check_stages(teacher_stages, "vid")
        check_non_negative("feat_weight", feat_weight, "vid")
        self.eps, self.feat_weight = float(eps), float(feat_weight)
        student_shapes, teacher_shapes = require_feature_shapes(context, "vid")
        self.counts = (len(student_shapes), len(teacher_shapes))
        self.student_stages, self.teacher_stages = resolve_stage_pairs("vid", stages, teacher_stages, *self.counts)
        self.regressors = nn.ModuleList()
        initial = math.log(math.expm1(init_pred_var - eps))
        for i, (s, t) in enumerate(zip(self.student_stages, self.teacher_stages)):
            channels = teacher_shapes[t][0]
            self.regressors.append(vid_regressor(student_shapes[s][0], channels))
            log_scale = torch.full((channels,), initial)
            if learn_variance:
                self.register_parameter(f"log_scale_{i}", nn.Parameter(log_scale))
            else:
                self.register_buffer(f"log_scale_{i}", log_scale)

    def variances(self) -> list[torch.Tensor]:
        """σ² = softplus(α) + eps per stage."""
        return [F.softplus(getattr(self, f"log_scale_{i}")) + self.eps for i in range(len(self.regressors))]

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student_feats = pick_maps(feature_maps(student), self.student_stages, self.counts[0], "vid", "student")
        teacher_feats = pick_maps(feature_maps(teacher), self.teacher_stages, self.counts[1], "vid", "teacher")
        pairs = [pool_to_common_size(s, t.detach()) for s, t in zip(student_feats, teacher_feats)]
        means = [regressor(s) for regressor, (s, _) in zip(self.regressors, pairs)]
        value = vid_loss(means, [t for _, t in pairs], self.variances())
        return {"loss": self.feat_weight * value, "vid": value.detach()}
