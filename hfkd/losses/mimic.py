"""Mimic: Li et al., feature mimicking for object detection, on a detector's neck levels as MasKD distills them."""

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


@without_autocast
def mimic_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_levels mean((f_s − f_t)²) over all N·C·H·W elements of each level's (N, C, H, W) maps.

    The student maps are the already adapted ones (a detector distiller's 1×1 convs); each pair must match in shape.
    """
    total = 0.0
    for student, teacher in neck_level_pairs(student_feats, teacher_feats, "mimic"):
        if student.shape != teacher.shape:
            raise UsageError(
                f"mimic: a student level {tuple(student.shape)} and its teacher level {tuple(teacher.shape)} differ; "
                "mimic compares the maps element by element. Adapt the student's channels to the teacher's (the "
                "detection distiller's 1×1 convs) and pair levels of the same stride."
            )
        total = total + F.mse_loss(student, teacher)
    return total


@register_loss("mimic")
class MimicLoss(DistillationLoss):
    """Feature mimicking: mean squared error between the student's and the teacher's neck (FPN) levels.

    Paper: Li, Jin, Yan, *Mimicking Very Efficient Network for Object Detection*, CVPR 2017 (no arXiv version)

    Objective: L = Σ_l mean_{n, c, h, w} (f_s^l − f_t^l)² over the neck levels l, times `loss_weight`, where f_s^l is
    the student's level l after its 1×1 adapter and f_t^l the teacher's. This is the "mimic" of DIST's detection
    results (hunto/MasKD's `DIST+mimic` configs: mmrazor's `MSELoss` with mean reduction per level, summed over the
    five FPN levels, weight 1, no mask). Li et al. mimic the features of the proposals' regions only; the
    reproduced configs use the whole maps, as here.

    The loss has no trainable parameters: the per-level 1×1 convolutions that map the student's channels to the
    teacher's (MasKD's five `Conv2d(256, 256, 1)` align modules) belong to the detection distiller, which applies
    them to the student's `neck_features` before this loss sees them. Both outputs must carry `neck_features`, a
    tuple of (B, C, H, W) maps that the object-detection task provides; it serves that task only.

    Args:
        loss_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the loss (MasKD's `loss_weight`).

    Returns:
        `dict` with `loss` (`loss_weight` times the mimic loss) and `mimic` (the unweighted loss).
    """

    tasks = frozenset({OBJECT_DETECTION})
    needs = LossNeeds()
    paper = PaperRef(
        title="Mimicking Very Efficient Network for Object Detection",
        authors="Quanquan Li, Shengying Jin, Junjie Yan",
        venue="CVPR 2017",
        arxiv_id="",
        bibtex=(
            "@inproceedings{li2017mimicking,\n"
            "  title={Mimicking Very Efficient Network for Object Detection},\n"
            "  author={Li, Quanquan and Jin, Shengying and Yan, Junjie},\n"
            "  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2017}\n"
            "}"
        ),
        code_url="https://github.com/hunto/MasKD",
    )

    def __init__(self, *, loss_weight: float = 1.0) -> None:
        super().__init__()
        check_non_negative("loss_weight", loss_weight, "mimic")
        self.loss_weight = float(loss_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = mimic_loss(neck_features(student, "student", "mimic"), neck_features(teacher, "teacher", "mimic"))
        return {"loss": self.loss_weight * value, "mimic": value.detach()}
