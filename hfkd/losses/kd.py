"""KD: Hinton et al., soft-target distillation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._functional import as_loss_dtype, check_position_mask, masked_mean, standardize_logits
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    OBJECT_DETECTION,
    SEMANTIC_SEGMENTATION,
    DistillationLoss,
    DistillBatch,
    PaperRef,
    check_positive,
    logits_of,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 4.0,
    logit_standardization: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Temperature-scaled KL divergence between teacher and student class distributions, per sample or per pixel.

    L = T² · mean_i KL(softmax(t_i / T) ‖ softmax(s_i / T)), with T = `temperature`, where i runs over the B rows of
    (B, C) logits, or over the B·H·W pixels of dense (B, C, H, W) logits (classes along dim 1). `mask`, a bool of
    shape (B, H, W) (or (B,) for 2-D logits), restricts the mean to the positions where it is True; without it
    every position counts, and when none is True the loss is 0. With `logit_standardization=True` both logits
    first go through `standardize_logits` over the classes (Sun et al., CVPR 2024), and T acts as their "base
    temperature".
    """
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    if student_logits.shape != teacher_logits.shape or student_logits.ndim not in (2, 4):
        raise UsageError(
            f"kd: student and teacher logits must have the same (B, C) or (B, C, H, W) shape, got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}."
        )
    if mask is not None:
        mask = check_position_mask(mask, student_logits, "kd")
    if logit_standardization:
        student_logits = standardize_logits(student_logits, dim=1)
        teacher_logits = standardize_logits(teacher_logits, dim=1)
    # Classes stay on dim 1 of the dense logits: no permuted copy of the maps is made.
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    per_position = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(1)
    # T² keeps the soft-target gradient scale independent of T (Hinton et al., section 2).
    return masked_mean(per_position, mask) * temperature**2


@register_loss("kd")
class KDLoss(DistillationLoss):
    """Knowledge distillation with softened class probabilities.

    Paper: Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network*, NIPS 2014 Deep Learning
    Workshop, arXiv:1503.02531

    Objective: T² · KL(softmax(teacher / T) ‖ softmax(student / T)), summed over classes and averaged over the
    batch, where T is `temperature`. Matches mdistiller's `KD.py` (T² inside the loss); its CIFAR-100 configs
    use T=4 with CE weight 0.1 and KD weight 0.9, its ImageNet configs T=1 with 0.5 / 0.5.

    Logit standardisation (Sun, Ren, Li, Wang, Cao, *Logit Standardization in Knowledge Distillation*, CVPR 2024,
    arXiv:2403.01427): with `logit_standardization=True` each row of both logits is replaced by
    (z − mean) / (unbiased std + 1e-7) before the formula above, so that (up to the 1e-7) the loss no longer
    sees a per-sample shift or positive scale of either model's logits; T becomes the "base temperature" and T²
    is kept, as in the authors' mdistiller fork. Their CLI `--logit-stand --base-temp 2 --kd-weight 9` means
    `temperature=2.0, logit_standardization=True` with `distill_weight=9.0` and `distill_ce_weight=0.1`.

    Dense logits (segmentation, a detector's dense head): on (B, C, H, W) logits the same KL is taken over the C
    classes at each pixel and averaged over the pixels that `DistillBatch.pixel_mask` marks (the pixels the labels
    do not ignore; every pixel when the task gives no mask), times T². This is the pixel-wise KD of
    Liu et al. (*Structured Knowledge Distillation for Semantic Segmentation*, CVPR 2019) as DIST's segmentation
    code writes it (`CriterionKD`: pixels as rows, KL batch-mean, T²), with ignored pixels left out.

    Args:
        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature T applied to both logits (the base temperature under standardisation).
        logit_standardization (`bool`, *optional*, defaults to `False`):
            Z-score each row of the student and teacher logits before the softmax.

    Returns:
        `dict` with `loss` and `kd` (the same value).
    """

    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION, OBJECT_DETECTION})
    paper = PaperRef(
        title="Distilling the Knowledge in a Neural Network",
        authors="Geoffrey Hinton, Oriol Vinyals, Jeff Dean",
        venue="NIPS 2014 Deep Learning Workshop",
        arxiv_id="1503.02531",
        bibtex=(
            "@article{hinton2015distilling,\n"
            "  title={Distilling the Knowledge in a Neural Network},\n"
            "  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},\n"
            "  journal={arXiv preprint arXiv:1503.02531},\n"
            "  year={2015}\n"
            "}"
        ),
    )

    def __init__(self, *, temperature: float = 4.0, logit_standardization: bool = False) -> None:
        super().__init__()
        check_positive("temperature", temperature, "kd")
        self.temperature = float(temperature)
        if not isinstance(logit_standardization, bool):
            raise UsageError(f"kd: `logit_standardization` must be true or false, got {logit_standardization!r}.")
        self.logit_standardization = logit_standardization

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        loss = kd_loss(
            logits_of(student),
            logits_of(teacher),
            temperature=self.temperature,
            logit_standardization=self.logit_standardization,
            mask=batch.pixel_mask,
        )
        return {"loss": loss, "kd": loss.detach()}
