"""OFD: Heo et al., pre-ReLU feature distillation with a margin ReLU and a partial L2 distance.

Over 150 lines: the inputs it needs (pre-activation maps, teacher BN statistics) are checked and explained here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfkd.losses._adapters import (
    conv_bn_connector,
    pick_maps,
    preact_feature_maps,
    require_feature_shapes,
    resolve_stage_pairs,
)
from hfkd.losses._feature_functional import check_stages, feature_pairs
from hfkd.losses._feature_maps import StageSpec
from hfkd.losses.base import DistillationLoss, DistillBatch, LossContext, LossNeeds, PaperRef, check_non_negative
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError

_NEEDS = (
    "ofd needs pre-activation features (`preact_hidden_states` on both model outputs) and the teacher's BN "
    "statistics (`context.teacher_bn_stats`), which this model does not expose. Use a feature loss that "
    "works on post-activation features instead, such as 'at', 'fitnet' or 'reviewkd'."
)


def ofd_margin(bn_mean: torch.Tensor, bn_std: torch.Tensor) -> torch.Tensor:
    """Per-channel margin E[x | x < 0] for x ~ N(mean, std²): m − s·φ(m/s)/Φ(−m/s), or −3s where Φ(−m/s) ≤ 0.001."""
    mean = bn_mean.detach().double()
    std = bn_std.detach().double().abs().clamp(min=1e-12)
    below = torch.special.ndtr(-mean / std)
    pdf = torch.exp(-0.5 * (mean / std) ** 2) / math.sqrt(2 * math.pi)
    return torch.where(below > 1e-3, mean - std * pdf / below.clamp(min=1e-3), -3 * std)


def ofd_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], margins: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Σ_i partial-L2(s_i, max(t_i, m_i)) / 2^(n−1−i): summed over C, H, W, averaged over B, deepest stage weight 1.

    Inputs are the connector outputs and the teacher's pre-activation maps (pooled here to the student's size).
    The partial L2 is 0 where the student is below a target that is itself ≤ 0 (the teacher, or its margin where the
    teacher is below it), and the squared difference elsewhere; margins (C,) are ≤ 0 by construction.
    """
    pairs = feature_pairs(student_feats, teacher_feats, "ofd")
    total = 0.0
    for i, ((student, teacher), margin) in enumerate(zip(pairs, margins)):
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
        margin = margin.to(student.dtype).view(1, -1, 1, 1)
        # mdistiller's three masked terms, kept literally: below the margin the target is the margin itself.
        distance = (
            (student - margin).pow(2) * ((student > margin) & (teacher <= margin))
            + (student - teacher).pow(2) * ((student > teacher) & (teacher > margin) & (teacher <= 0))
            + (student - teacher).pow(2) * (teacher > 0)
        )
        total = total + distance.sum(dim=(1, 2, 3)).mean() / 2 ** (len(pairs) - 1 - i)
    return total


@register_loss("ofd")
class OFDLoss(DistillationLoss):
    """Overhaul of feature distillation: pre-ReLU maps, a margin ReLU on the teacher, a partial L2 distance.

    Paper: Heo, Kim, Yun, Park, Kwak, Choi, *A Comprehensive Overhaul of Feature Distillation*, ICCV 2019,
    arXiv:1904.01866

    Objective: per selected stage i of n, the student's pre-activation map goes through a connector r_i (1×1 conv
    + BN); the teacher's pre-activation map t_i is pooled to the student's size and replaced by max(t_i, m_i),
    where m_i is the margin E[x | x < 0] of N(β, γ²) per channel, β and |γ| being the affine parameters of the
    teacher's BN before that ReLU (−3|γ| where Φ(−β/|γ|) ≤ 0.001). L = Σ_i d_p(r_i(s_i), max(t_i, m_i)) / 2^(n−1−i),
    with d_p the squared difference except where student ≤ target ≤ 0, summed over C, H, W and averaged over the
    batch; times `feat_weight`.

    Inputs: transformers models do not report pre-activation maps. The outputs must carry `preact_hidden_states`
    (attribute or key, laid out like `hidden_states`, stem first) and `context.teacher_bn_stats` must list
    one `(mean, std)` pair of (C,) tensors per selected teacher stage (or one per feature map, stem first), i.e.
    mdistiller's `get_bn_before_relu()` as (bias, weight); otherwise a ValueError says so. The trainer provides
    both (`needs.preactivations`) for transformers ResNet and hfkd's CIFAR ResNets (`hfkd.features`).

    Reproduces mdistiller's `OFD.py`: `stages="1:"` is its `preact_feats[1:]`, `feat_weight=1e-3` its FEAT_WEIGHT
    (1e-4 in its ImageNet ResNet-50 → MobileNetV1 config), CE_WEIGHT 1, so `distill_ce_weight=1.0,
    distill_weight=1.0` give its total. Deviations: the teacher stays in eval mode (mdistiller's `train()` puts it in
    training mode, so its BN uses batch statistics); stages are paired by index instead of aligned from the end.
    The connectors' BatchNorm makes the loss depend on how the batch is composed.

    Args:
        connector_kernel_size (`int`, *optional*, defaults to `1`):
            Kernel of the connector conv (mdistiller's CONNECTOR.KERNEL_SIZE); odd, padded to keep the size.
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Student pre-activation maps, indexed as in `hfkd.features` (0 is the stem).
        teacher_stages (`str` or `list[int]`, *optional*, defaults to `None`):
            Teacher pre-activation maps they are matched to; `None` uses `stages`.
        feat_weight (`float`, *optional*, defaults to `1e-3`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the distance) and `ofd` (the unweighted distance).
    """

    needs = LossNeeds(hidden_states=True, preactivations=True)
    paper = PaperRef(
        title="A Comprehensive Overhaul of Feature Distillation",
        authors="Byeongho Heo, Jeesoo Kim, Sangdoo Yun, Hyojin Park, Nojun Kwak, Jin Young Choi",
        venue="ICCV 2019",
        arxiv_id="1904.01866",
        bibtex=(
            "@inproceedings{heo2019comprehensive,\n"
            "  title={A Comprehensive Overhaul of Feature Distillation},\n"
            "  author={Heo, Byeongho and Kim, Jeesoo and Yun, Sangdoo and Park, Hyojin and Kwak, Nojun and\n"
            "          Choi, Jin Young},\n"
            "  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision},\n"
            "  year={2019}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        connector_kernel_size: int = 1,
        stages: StageSpec = "1:",
        teacher_stages: StageSpec = None,
        feat_weight: float = 1e-3,
        context: LossContext,
    ) -> None:
        super().__init__()
        kernel = connector_kernel_size
        if isinstance(kernel, bool) or not (isinstance(kernel, int) and kernel > 0 and kernel % 2):
            raise UsageError(f"ofd: `connector_kernel_size` must be an odd int > 0, got {connector_kernel_size!r}.")
        check_stages(stages, "ofd")
        if teacher_stages is not None:
            check_stages(teacher_stages, "ofd")
        check_non_negative("feat_weight", feat_weight, "ofd")
        self.feat_weight = float(feat_weight)
        student_shapes, teacher_shapes = require_feature_shapes(context, "ofd")
        self.counts = (len(student_shapes), len(teacher_shapes))
        self.student_stages, self.teacher_stages = resolve_stage_pairs("ofd", stages, teacher_stages, *self.counts)
        bn_stats = list(context.teacher_bn_stats or [])
        if len(bn_stats) == len(teacher_shapes):
            # One pair per feature map, stem first: keep the selected stages'.
            bn_stats = [bn_stats[i] for i in self.teacher_stages]
        if len(bn_stats) != len(self.teacher_stages):
            raise UsageError(f"{_NEEDS} (got {len(bn_stats)} BN statistics for {len(self.teacher_stages)} stages.)")
        self.connectors = nn.ModuleList()
        for i, (s, t, (mean, std)) in enumerate(zip(self.student_stages, self.teacher_stages, bn_stats)):
            channels = teacher_shapes[t][0]
            margin = ofd_margin(torch.as_tensor(mean), torch.as_tensor(std)).float().flatten()
            if margin.numel() != channels:
                raise UsageError(
                    f"ofd: the teacher BN statistics of stage {t} have {margin.numel()} channels, its map {channels}."
                )
            self.register_buffer(f"margin_{i}", margin)
            self.connectors.append(conv_bn_connector(student_shapes[s][0], channels, connector_kernel_size))

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student_maps, teacher_maps = preact_feature_maps(student), preact_feature_maps(teacher)
        if student_maps is None or teacher_maps is None:
            raise UsageError(_NEEDS)
        student_feats = pick_maps(student_maps, self.student_stages, self.counts[0], "ofd", "student")
        teacher_feats = pick_maps(teacher_maps, self.teacher_stages, self.counts[1], "ofd", "teacher")
        student_feats = [connector(s) for connector, s in zip(self.connectors, student_feats)]
        margins = [getattr(self, f"margin_{i}") for i in range(len(self.connectors))]
        value = ofd_loss(student_feats, teacher_feats, margins)
        return {"loss": self.feat_weight * value, "ofd": value.detach()}
