"""SDD: Wei & Bai, scale-decoupled distillation (KD or DKD on the logits of pooled regions).

Over 150 lines: SD-KD and SD-DKD share the region pooling and weighting, so both variants live in this file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_maps import select_features
from hfkd.losses._functional import as_loss_dtype, warmup_factor
from hfkd.losses.base import (
    DistillationLoss,
    DistillBatch,
    LossContext,
    LossNeeds,
    PaperRef,
    check_non_negative,
    check_positive,
)
from hfkd.losses.dkd import dkd_terms_per_sample
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def region_logits(feature_map: torch.Tensor, head: Callable, grids: Sequence[int] = (1, 2, 4)) -> torch.Tensor:
    """(B, C, N) logits of pooled regions: the map is average-pooled to a max(grids)² grid, then to each grid
    (1: the global region first, then 2×2, then 4×4, row-major), and every region goes through `head`."""
    finest = F.adaptive_avg_pool2d(feature_map, max(grids))
    columns = []
    for grid in grids:
        pooled = F.adaptive_avg_pool2d(finest, grid)  # (B, D, g, g)
        for row in range(grid):
            for col in range(grid):
                columns.append(head(pooled[:, :, row : row + 1, col : col + 1]))
    return torch.stack(columns, dim=-1)


def sdd_kd_loss(
    student_region_logits: torch.Tensor,
    teacher_region_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Scale-decoupled KD on (B, C, N) region logits (region 0 global, then the 2×2, then the 4×4 regions).

    Every (region, sample) row gets T²·KL(softmax(t/T) ‖ softmax(s/T)); a local row whose teacher prediction is
    right while the global one is wrong, or the reverse, weighs 2, any other row 1; the weighted sum is divided by
    N·B, as SD-KD's reference code does.
    """
    student_rows, teacher_rows, weights = _region_rows(student_region_logits, teacher_region_logits, labels)
    log_p_student = F.log_softmax(student_rows / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_rows / temperature, dim=-1)
    # T² per row, as in KD.
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1) * temperature**2
    return (weights * per_row).sum() / weights.numel()


def sdd_dkd_loss(
    student_region_logits: torch.Tensor,
    teacher_region_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Scale-decoupled DKD (SD-DKD) on (B, C, N) region logits: every (region, sample) row gets
    α·TCKD + β·NCKD (each T²-scaled, the sample's label the target of every region), rows weighted 1 or 2 as in
    `sdd_kd_loss`, and the weighted sum divided by N·B, as SD-DKD's reference code does (no warm-up here)."""
    student_rows, teacher_rows, weights = _region_rows(student_region_logits, teacher_region_logits, labels)
    row_labels = labels.repeat(student_region_logits.shape[-1])
    tckd, nckd = dkd_terms_per_sample(student_rows, teacher_rows, row_labels, temperature=temperature)
    return (weights * (alpha * tckd + beta * nckd)).sum() / weights.numel()


def _region_rows(
    student_region_logits: torch.Tensor, teacher_region_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Region-major (N·B, C) rows of both models and each row's weight: 2 where the teacher's prediction on the
    region and on the whole image (region 0) differ in correctness, else 1 (region 0 always 1)."""
    student, teacher = as_loss_dtype(student_region_logits, teacher_region_logits.detach())
    batch, classes, regions = student.shape
    student_rows = student.permute(2, 0, 1).reshape(regions * batch, classes)
    teacher_rows = teacher.permute(2, 0, 1).reshape(regions * batch, classes)
    correct = teacher_rows.argmax(-1).view(regions, batch).eq(labels.view(1, batch))
    weights = torch.where(correct ^ correct[:1], 2.0, 1.0).to(student_rows.dtype)
    weights[0] = 1.0
    return student_rows, teacher_rows, weights.flatten()


@register_loss("sdd")
class SDDLoss(DistillationLoss):
    """Scale-decoupled distillation: KD on the logits of the whole image and of its regions, where regions on
    which the teacher's global and local predictions disagree in correctness count twice.

    Paper: Wei, Bai, *Scale Decoupled Distillation*, CVPR 2024, arXiv:2403.13512

    Objective: the last feature map of each model is average-pooled to 4×4, from which the 2×2 and 1×1 grids
    follow; every region of the grids in `grids` goes through the model's own classifier head (N = 21 regions for
    [1, 2, 4]), and `sdd_kd_loss` (`base="kd"`, SD-KD) or `sdd_dkd_loss` (`base="dkd"`, SD-DKD) compares student
    and teacher region logits with T = `temperature`. With `grids=[1]` it is plain KD or DKD. Reference settings
    (CIFAR-100): SD-KD T 4, CE 0.1, KD 0.9 (`distill_ce_weight=0.1`, `distill_weight=0.9`), no warm-up; SD-DKD
    α 1, β 8, T 4, CE 1, times DKD's warm-up min((⌊epoch⌋ + 1) / `warmup_epochs`, 1). The heads come from the
    trainer (`LossContext.student_head`/`teacher_head`): timm models, ResNet, RegNet and ConvNeXt are supported.
    The cost is an extra head evaluation per region (21× the logit rows).

    Args:
        temperature (`float`, *optional*, defaults to `4.0`): Softmax temperature T.
        grids (`list[int]`, *optional*, defaults to `[1, 2, 4]`): Region grids, the reference's M; must start
            with 1 (the global region).
        stage (`int`, *optional*, defaults to `-1`): Which feature map is pooled (the last one in the reference).
        base (`str`, *optional*, defaults to `"kd"`): The per-region loss: `"kd"` (SD-KD) or `"dkd"` (SD-DKD).
        alpha (`float`, *optional*): SD-DKD's TCKD weight α (default 1); only with `base="dkd"`.
        beta (`float`, *optional*): SD-DKD's NCKD weight β (default 8); only with `base="dkd"`.
        warmup_epochs (`float`, *optional*): SD-DKD's warm-up length in epochs (default 20, 0 for none); only with
            `base="dkd"`.

    Returns:
        `dict` with `loss` and `sdd` (and `warmup`, the factor applied, with `base="dkd"`).
    """

    needs = LossNeeds(hidden_states=True, labels=True, classifier_heads=True)
    paper = PaperRef(
        title="Scale Decoupled Distillation",
        authors="Shicai Wei, Yang Bai",
        venue="CVPR 2024",
        arxiv_id="2403.13512",
        bibtex=(
            "@inproceedings{wei2024sdd,\n"
            "  title={Scale Decoupled Distillation},\n"
            "  author={Wei, Shicai and Bai, Yang},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2024}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        temperature: float = 4.0,
        grids: Sequence[int] = (1, 2, 4),
        stage: int = -1,
        base: str = "kd",
        alpha: float | None = None,
        beta: float | None = None,
        warmup_epochs: float | None = None,
        context: LossContext,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature, "sdd")
        if base not in ("kd", "dkd"):
            raise UsageError(f"sdd: `base` must be 'kd' (SD-KD) or 'dkd' (SD-DKD), got {base!r}.")
        dkd_only = {"alpha": alpha, "beta": beta, "warmup_epochs": warmup_epochs}
        if base == "kd" and any(value is not None for value in dkd_only.values()):
            given = sorted(name for name, value in dkd_only.items() if value is not None)
            raise UsageError(f"sdd: {given} apply to SD-DKD only; add base: dkd to the loss kwargs, or drop them.")
        self.base = base
        self.alpha = 1.0 if alpha is None else float(alpha)
        self.beta = 8.0 if beta is None else float(beta)
        self.warmup_epochs = 20.0 if warmup_epochs is None else float(warmup_epochs)
        for name in ("alpha", "beta", "warmup_epochs"):
            check_non_negative(name, getattr(self, name), "sdd")
        grids = [int(g) for g in grids]
        if not grids or grids[0] != 1 or any(g < 1 for g in grids):
            raise UsageError(f"sdd: `grids` must start with 1 (the global region), e.g. [1, 2, 4]; got {grids}.")
        if context.student_head is None or context.teacher_head is None:
            raise UsageError(
                "sdd classifies regions with the models' heads, which the trainer provides "
                "(LossContext.student_head / teacher_head); build it through DistillationTrainer."
            )
        self.temperature, self.grids, self.stage = float(temperature), grids, int(stage)
        # Plain attributes, not submodules: the heads belong to the models, and their weights are saved there.
        self._heads = (context.student_head, context.teacher_head)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.labels is None:
            raise UsageError("sdd needs the labels of the batch; pass a `labels` column to the trainer.")
        student_head, teacher_head = self._heads
        (student_map,) = select_features(student, [self.stage])
        (teacher_map,) = select_features(teacher, [self.stage])
        student_regions = region_logits(student_map, student_head, self.grids)
        with torch.no_grad():
            teacher_regions = region_logits(teacher_map, teacher_head, self.grids)
        if self.base == "kd":
            loss = sdd_kd_loss(student_regions, teacher_regions, batch.labels, temperature=self.temperature)
            return {"loss": loss, "sdd": loss.detach()}
        hparams = {"alpha": self.alpha, "beta": self.beta, "temperature": self.temperature}
        loss = sdd_dkd_loss(student_regions, teacher_regions, batch.labels, **hparams)
        factor = warmup_factor(batch.epoch, self.warmup_epochs)
        return {
            "loss": factor * loss,
            "sdd": loss.detach(),
            "warmup": torch.tensor(factor, dtype=loss.dtype, device=loss.device),
        }
