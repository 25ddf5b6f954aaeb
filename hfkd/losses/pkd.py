"""PKD: Cao et al., feature distillation for detectors through the Pearson correlation coefficient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_functional import neck_level_pairs, without_autocast
from hfkd.losses._feature_maps import neck_features
from hfkd.losses.base import OBJECT_DETECTION, DistillationLoss, DistillBatch, LossNeeds, PaperRef, check_non_negative
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def standardize_channels(feats: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x − mean) / (std + eps) per channel of a (N, C, H, W) map, over its N·H·W values together (unbiased std)."""
    # Statistics over dims (0, 2, 3) need no permuted copy of the map.
    mean = feats.mean(dim=(0, 2, 3), keepdim=True)
    std = feats.std(dim=(0, 2, 3), keepdim=True)
    return (feats - mean) / (std + eps)


@without_autocast
def pkd_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_levels mean((ẑ_s − ẑ_t)²) / 2, ẑ each map standardised per channel over its N·H·W values (eps 1e-6).

    A student level whose (H, W) differs from the teacher's is first resized to it bilinearly (mmrazor's
    `resize_stu=True`); channel counts must match.
    """
    total = 0.0
    for student, teacher in neck_level_pairs(student_feats, teacher_feats, "pkd"):
        if student.shape[:2] != teacher.shape[:2]:
            raise UsageError(
                f"pkd: a student level {tuple(student.shape)} and its teacher level {tuple(teacher.shape)} differ in "
                "batch or channels; PKD correlates the maps channel by channel. Map the student's channels to the "
                "teacher's first (a 1×1 conv in the detection distiller)."
            )
        if student.shape[2:] != teacher.shape[2:]:
            student = F.interpolate(student, size=teacher.shape[2:], mode="bilinear", align_corners=False)
        if student.shape[0] * student.shape[2] * student.shape[3] < 2:
            raise UsageError(
                f"pkd: a level of shape {tuple(teacher.shape)} has one value per channel; the unbiased std of each "
                "channel needs at least two (N·H·W ≥ 2)."
            )
        # MSE of standardised maps / 2 is 1 − the Pearson correlation of each channel (up to eps and N·H·W − 1).
        total = total + F.mse_loss(standardize_channels(student), standardize_channels(teacher)) / 2
    return total


@register_loss("pkd")
class PKDLoss(DistillationLoss):
    """PKD: imitate the teacher's neck (FPN) features through their Pearson correlation, channel by channel.

    Paper: Cao, Zhang, Gao, Cheng, Cheng, Cheng, *PKD: General Distillation Framework for Object Detectors via
    Pearson Correlation Coefficient*, NeurIPS 2022, arXiv:2207.02039

    Objective: each level's map is standardised per channel, ẑ = (f − mean) / (std + 1e-6) with the mean and the
    unbiased std taken over all N·H·W values of the channel in the batch;
    L = Σ_l mean_{n, c, h, w} (ẑ_s^l − ẑ_t^l)² / 2 over the neck levels l, times `loss_weight`. Up to the eps this is
    Σ_l mean_c (1 − r_c)·(M − 1)/M, with M = N·H·W and r_c the Pearson correlation of channel c, so the feature
    magnitudes of either model no longer matter (the paper's point).
    As mmrazor's `PKDLoss` (`resize_stu=True`): a student level of another spatial size is resized bilinearly to
    the teacher's (mmrazor compares the heights only; here both sides). The statistics span the micro-batch, so
    the value depends on its composition.

    Both outputs must carry `neck_features`, a tuple of (B, C, H, W) maps that the object-detection task provides;
    the loss has no trainable parameters and serves that task only. The default weight is mmrazor's Faster R-CNN
    R101 → R50 config (6, on FPN levels P2–P5: the task chooses the levels); its RetinaNet X101 → R50 config uses 10.

    Args:
        loss_weight (`float`, *optional*, defaults to `6.0`):
            Multiplier of the loss (mmrazor's `loss_weight`).

    Returns:
        `dict` with `loss` (`loss_weight` times the PKD loss) and `pkd` (the unweighted loss).
    """

    tasks = frozenset({OBJECT_DETECTION})
    needs = LossNeeds()
    paper = PaperRef(
        title="PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient",
        authors="Weihan Cao, Yifan Zhang, Jianfei Gao, Anda Cheng, Ke Cheng, Jian Cheng",
        venue="NeurIPS 2022",
        arxiv_id="2207.02039",
        bibtex=(
            "@inproceedings{cao2022pkd,\n"
            "  title={PKD: General Distillation Framework for Object Detectors via Pearson Correlation Coefficient},\n"
            "  author={Cao, Weihan and Zhang, Yifan and Gao, Jianfei and Cheng, Anda and Cheng, Ke and Cheng, Jian},\n"
            "  booktitle={Advances in Neural Information Processing Systems},\n"
            "  year={2022}\n"
            "}"
        ),
        code_url="https://github.com/open-mmlab/mmrazor",
    )

    def __init__(self, *, loss_weight: float = 6.0) -> None:
        super().__init__()
        check_non_negative("loss_weight", loss_weight, "pkd")
        self.loss_weight = float(loss_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = pkd_loss(neck_features(student, "student", "pkd"), neck_features(teacher, "teacher", "pkd"))
        return {"loss": self.loss_weight * value, "pkd": value.detach()}
