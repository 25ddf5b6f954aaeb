"""ReviewKD: Chen et al., knowledge review through attention-based fusion of student stages.

Over 150 lines: the ABF fusion and how mdistiller's shape settings map onto the probed shapes are kept here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hfkd.losses._adapters import ABF, pick_maps, preact_feature_maps, require_feature_shapes, resolve_stage_pairs
from hfkd.losses._feature_functional import check_stages, feature_pairs
from hfkd.losses._feature_maps import StageSpec, feature_maps, pooled_features
from hfkd.losses._functional import warmup_factor
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


def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss, summed over stages: per stage of height h,
    (MSE + Σ_{l ∈ (4, 2, 1), l < h} 2^−k · MSE(avg-pool to l×l)) / (1 + Σ 2^−k), k counting the levels used.
    """
    total = 0.0
    for student, teacher in feature_pairs(student_feats, teacher_feats, "reviewkd"):
        if student.shape != teacher.shape:
            raise UsageError(
                f"reviewkd: fused student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ."
            )
        loss, weight, norm = F.mse_loss(student, teacher), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= student.shape[2]:
                continue
            weight /= 2
            pooled = F.mse_loss(F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level))
            loss, norm = loss + weight * pooled, norm + weight
        total = total + loss / norm
    return total


@register_loss("reviewkd")
class ReviewKDLoss(DistillationLoss):
    """Knowledge review: fuse each student stage with the deeper ones (ABF) and match all teacher stages (HCL).

    Paper: Chen, Liu, Zhao, Jia, *Distilling Knowledge via Knowledge Review*, CVPR 2021, arXiv:2104.09044

    Objective: the student maps at `stages` plus the pooled last stage (as 1×1) are fused deepest first: each ABF
    applies a 1×1 conv + BN, blends it with the upsampled fused map of the deeper stage through two sigmoid
    attention maps (not for the deepest), resizes to the teacher's size (nearest) and outputs a 3×3 conv + BN with
    the teacher's channels. L = warmup(epoch) · Σ_stages HCL(fused_i, t_i), times `feat_weight`; HCL is
    `hcl_loss` and warmup(epoch) = min((⌊epoch⌋ + 1) / `warmup_epochs`, 1), mdistiller's min(epoch / WARMUP, 1)
    with its 1-based epoch (as in hfkd's DKD). Mid channels = min(`max_mid_channels`, student's last channels).

    Reproduces mdistiller's `ReviewKD.py` with SHAPES / OUT_SHAPES / IN_CHANNELS / OUT_CHANNELS read from the
    probed shapes: `stages="1:"` for both (its student list also holds the stem, which its zip drops), WARMUP 20,
    REVIEWKD_WEIGHT 1, CE_WEIGHT 1: `distill_ce_weight=1.0, distill_weight=1.0`. Its CIFAR-100 configs use
    `feat_weight=5.0`; ImageNet `warmup_epochs=1` with weight 1 (ResNet-34 → ResNet-18) or 8 (ResNet-50 →
    MobileNetV1). Deviation: mdistiller's teacher side is `preact_feats[1:]`, which transformers models do not
    report; we use the teacher's post-activation maps, or its `preact_hidden_states` (laid out like
    `hidden_states`, stem first) when the output carries them. `student_preact=True` (mdistiller's STU_PREACT)
    needs `preact_hidden_states` on the student. The ABFs' BatchNorm makes the loss depend on how the batch is
    composed.

    Args:
        warmup_epochs (`float`, *optional*, defaults to `20.0`):
            Epochs over which the loss ramps up linearly; 0 disables the warm-up.
        max_mid_channels (`int`, *optional*, defaults to `512`):
            Upper bound of the ABFs' inner width.
        student_preact (`bool`, *optional*, defaults to `False`):
            Fuse the student's pre-activation maps (`preact_hidden_states`) instead of `hidden_states`.
        stages (`str` or `list[int]`, *optional*, defaults to `"1:"`):
            Student stages, indexed as in `hfkd.features` (0 is the stem); the pooled last stage is appended.
        teacher_stages (`str` or `list[int]`, *optional*, defaults to `None`):
            Teacher stages they are matched to; `None` uses `stages`.
        feat_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (mdistiller's REVIEWKD_WEIGHT).

    Returns:
        `dict` with `loss`, `reviewkd` (the unweighted HCL sum) and `warmup` (the factor applied).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Distilling Knowledge via Knowledge Review",
        authors="Pengguang Chen, Shu Liu, Hengshuang Zhao, Jiaya Jia",
        venue="CVPR 2021",
        arxiv_id="2104.09044",
        bibtex=(
            "@inproceedings{chen2021distilling,\n"
            "  title={Distilling Knowledge via Knowledge Review},\n"
            "  author={Chen, Pengguang and Liu, Shu and Zhao, Hengshuang and Jia, Jiaya},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2021}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        warmup_epochs: float = 20.0,
        max_mid_channels: int = 512,
        student_preact: bool = False,
        stages: StageSpec = "1:",
        teacher_stages: StageSpec = None,
        feat_weight: float = 1.0,
        context: LossContext,
    ) -> None:
        super().__init__()
        check_non_negative("warmup_epochs", warmup_epochs, "reviewkd")
        if isinstance(max_mid_channels, bool) or not isinstance(max_mid_channels, int) or max_mid_channels < 1:
            raise UsageError(f"reviewkd: `max_mid_channels` must be a positive int, got {max_mid_channels!r}.")
        if not isinstance(student_preact, bool):
            raise UsageError(f"reviewkd: `student_preact` must be true or false, got {student_preact!r}.")
        check_stages(stages, "reviewkd")
        if teacher_stages is not None:
            check_stages(teacher_stages, "reviewkd")
        check_non_negative("feat_weight", feat_weight, "reviewkd")
        self.warmup_epochs, self.feat_weight = float(warmup_epochs), float(feat_weight)
        self.student_preact = student_preact
        student_shapes, teacher_shapes = require_feature_shapes(context, "reviewkd")
        self.counts = (len(student_shapes), len(teacher_shapes))
        self.student_stages, self.teacher_stages = resolve_stage_pairs(
            "reviewkd", stages, teacher_stages, *self.counts
        )
        # Shallow to deep, the pooled last stage (1×1) appended, as mdistiller's IN/OUT_CHANNELS and OUT_SHAPES.
        in_channels = [student_shapes[i][0] for i in self.student_stages] + [student_shapes[-1][0]]
        out_channels = [teacher_shapes[i][0] for i in self.teacher_stages] + [teacher_shapes[-1][0]]
        self.out_sizes = [tuple(teacher_shapes[i][1:]) for i in self.teacher_stages] + [(1, 1)]
        mid = min(max_mid_channels, in_channels[-1])
        last = len(in_channels) - 1
        abfs = [ABF(c_in, mid, c_out, fuse=i < last) for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))]
        self.abfs = nn.ModuleList(abfs[::-1])

    def warmup_factor(self, epoch: float) -> float:
        return warmup_factor(epoch, self.warmup_epochs)

    def _features(self, output: Any, maps: list[torch.Tensor], stages: list[int], count: int, who: str) -> list:
        return pick_maps(maps, stages, count, "reviewkd", who) + [pooled_features(output)[:, :, None, None]]

    def fuse(self, student_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABFs' outputs for the student maps (shallow to deep, the pooled last stage appended), deepest first."""
        fused, residual = [], None
        for abf, feats, size in zip(self.abfs, student_feats[::-1], self.out_sizes[::-1]):
            out, residual = abf(feats, residual, size)
            fused.insert(0, out)
        return fused

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        student_maps = preact_feature_maps(student) if self.student_preact else feature_maps(student)
        if student_maps is None:
            raise UsageError("reviewkd: `student_preact=True` needs `preact_hidden_states` on the student's output.")
        teacher_maps = preact_feature_maps(teacher) or feature_maps(teacher)
        student_feats = self._features(student, student_maps, self.student_stages, self.counts[0], "student")
        teacher_feats = self._features(teacher, teacher_maps, self.teacher_stages, self.counts[1], "teacher")
        value = hcl_loss(self.fuse(student_feats), teacher_feats)
        factor = self.warmup_factor(batch.epoch)
        loss = self.feat_weight * factor * value
        warmup = torch.tensor(factor, dtype=loss.dtype, device=loss.device)
        return {"loss": loss, "reviewkd": value.detach(), "warmup": warmup}
