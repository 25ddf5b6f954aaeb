"""DIST: Huang et al., relation-based distillation from a stronger teacher."""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses._functional import as_loss_dtype, check_position_mask
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    OBJECT_DETECTION,
    SEMANTIC_SEGMENTATION,
    DistillationLoss,
    DistillBatch,
    PaperRef,
    check_non_negative,
    check_positive,
    logits_of,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def _row_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    # eps is added to the product of the norms, exactly where the authors' code adds it.
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C) rows as they are; (B, C, H, W) maps as B·H·W rows of C channels, in (b, h, w) order."""
    return logits if logits.ndim == 2 else logits.movedim(1, -1).reshape(-1, logits.shape[1])


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    use_sigmoid: bool = False,
    mask: torch.Tensor | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """τ²·(β·inter + γ·intra) on softmax(z/τ), as in the authors' `dist_kd.py`; inter and intra are the relation
    losses 1 − mean Pearson correlation (unscaled), returned as `terms` with `return_terms=True`.

    Rows are the samples of (N, C) logits, or the B·H·W positions of (B, C, H, W) maps (each position a row of its C
    channels, as DIST's segmentation and MasKD's detection code flatten them); `mask` ((B, H, W), or (N,) for rows)
    keeps the rows where it is True. `use_sigmoid=True` takes σ(z/τ) of every entry instead of the softmax over a
    row (MasKD's `use_sigmoid`, for sigmoid-scored dense heads). With no row kept the loss is 0.
    """
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    if student_logits.shape != teacher_logits.shape or student_logits.ndim not in (2, 4):
        raise UsageError(
            f"dist: student and teacher logits must have the same (N, C) or (B, C, H, W) shape, got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}."
        )
    student_rows, teacher_rows = _as_rows(student_logits), _as_rows(teacher_logits)
    if mask is not None:
        keep = check_position_mask(mask, student_logits, "dist").reshape(-1)
        student_rows, teacher_rows = student_rows[keep], teacher_rows[keep]
    if len(student_rows) == 0:
        zero = student_rows.sum()
        return (zero, {"inter": zero.detach(), "intra": zero.detach()}) if return_terms else zero
    if use_sigmoid:
        student_probs, teacher_probs = (student_rows / temperature).sigmoid(), (teacher_rows / temperature).sigmoid()
    else:
        student_probs = (student_rows / temperature).softmax(dim=1)
        teacher_probs = (teacher_rows / temperature).softmax(dim=1)
    inter = 1 - _row_pearson(student_probs, teacher_probs).mean()
    intra = 1 - _row_pearson(student_probs.t(), teacher_probs.t()).mean()
    loss = temperature**2 * (beta * inter + gamma * intra)
    return (loss, {"inter": inter, "intra": intra}) if return_terms else loss


def auxiliary_logits_of(output: Any, role: str, loss_key: str) -> torch.Tensor:
    """The `auxiliary_logits` (an auxiliary head's dense logits) of a model output; a `UsageError` names the fix."""
    logits = output.get("auxiliary_logits") if isinstance(output, dict) else getattr(output, "auxiliary_logits", None)
    if logits is None:
        raise UsageError(
            f"{loss_key}: aux_weight > 0 distills the auxiliary head, but the {role} output "
            f"({type(output).__name__}) has no `auxiliary_logits`. Use student and teacher models with an auxiliary "
            "head whose outputs carry `auxiliary_logits`, or set aux_weight=0."
        )
    return logits


@register_loss("dist")
class DISTLoss(DistillationLoss):
    """DIST: match the teacher's inter-class and intra-class relations through Pearson correlation.

    Paper: Huang, You, Wang, Qian, Xu, *Knowledge Distillation from A Stronger Teacher*, NeurIPS 2022,
    arXiv:2205.10536

    Objective: with Y = softmax(z / τ) row-wise, inter = 1 − mean_i ρ(Y_s[i, :], Y_t[i, :]) and
    intra = 1 − mean_j ρ(Y_s[:, j], Y_t[:, j]); L = τ²·(β·inter + γ·intra), where ρ is the Pearson
    correlation with 1e-8 added to the product of the norms (the authors' code), β = `beta`, γ = `gamma`,
    τ = `temperature`. The intra-class term correlates columns across the batch, so the loss depends on the
    batch composition by design: per-device batch size changes it. The authors train ImageNet with τ=1 and
    weight 2 on this loss (CE 1), CIFAR-100 with τ=4 and weight 2.

    Dense logits, as DIST's segmentation code (`segmentation/losses/dist_kd.py`, DeepLabV3/PSPNet on Cityscapes):
    (B, C, H, W) logits become B·H·W rows of C classes, so inter relates the classes at each pixel and intra each
    class across every pixel of the micro-batch; its defaults are these (β = γ = 1, no temperature, every pixel
    counted, ignored ones included). `mask_ignored=True` keeps only the pixels `DistillBatch.pixel_mask` marks.
    `aux_weight` adds the auxiliary head's term, aux_weight·L(aux_s, aux_t) on the outputs' `auxiliary_logits`
    (the reference's `--aux`, 0.4, which its DeepLabV3 launch script does not pass; its code turns it on for ResNet
    students). For detection (MasKD's `DIST`), `use_sigmoid=True` replaces the softmax by σ(z/τ) on every entry,
    for sigmoid-scored dense heads: rows are the positions, columns the anchors × classes of the head's channels.
    MasKD has no temperature (τ = 1 here gives its formula); any other τ divides the logits and multiplies by τ²
    as with the softmax.

    Args:
        beta (`float`, *optional*, defaults to `1.0`):
            Weight β of the inter-class (per-sample or per-pixel) relation term.
        gamma (`float`, *optional*, defaults to `1.0`):
            Weight γ of the intra-class (per-class) relation term.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature τ.
        use_sigmoid (`bool`, *optional*, defaults to `False`):
            Score each entry with a sigmoid instead of a softmax over the row (MasKD's RetinaNet setting).
        aux_weight (`float`, *optional*, defaults to `0.0`):
            Weight of the same loss on both outputs' `auxiliary_logits`; 0 leaves the auxiliary head alone.
        mask_ignored (`bool`, *optional*, defaults to `False`):
            Leave out the pixels that `DistillBatch.pixel_mask` marks as ignored (the reference counts them all).

    Returns:
        `dict` with `loss`, `inter` and `intra` (the main head's unweighted relation losses, before τ²), and `aux`
        (the auxiliary head's loss, before `aux_weight`) when `aux_weight` > 0.
    """

    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION, OBJECT_DETECTION})
    paper = PaperRef(
        title="Knowledge Distillation from A Stronger Teacher",
        authors="Tao Huang, Shan You, Fei Wang, Chen Qian, Chang Xu",
        venue="NeurIPS 2022",
        arxiv_id="2205.10536",
        bibtex=(
            "@inproceedings{huang2022dist,\n"
            "  title={Knowledge Distillation from A Stronger Teacher},\n"
            "  author={Huang, Tao and You, Shan and Wang, Fei and Qian, Chen and Xu, Chang},\n"
            "  booktitle={Advances in Neural Information Processing Systems},\n"
            "  year={2022}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        use_sigmoid: bool = False,
        aux_weight: float = 0.0,
        mask_ignored: bool = False,
    ) -> None:
        super().__init__()
        check_non_negative("beta", beta, "dist")
        check_non_negative("gamma", gamma, "dist")
        check_positive("temperature", temperature, "dist")
        check_non_negative("aux_weight", aux_weight, "dist")
        for name, flag in (("use_sigmoid", use_sigmoid), ("mask_ignored", mask_ignored)):
            if not isinstance(flag, bool):
                raise UsageError(f"dist: `{name}` must be true or false, got {flag!r}.")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)
        self.use_sigmoid, self.aux_weight, self.mask_ignored = use_sigmoid, float(aux_weight), mask_ignored

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        hparams = {"beta": self.beta, "gamma": self.gamma, "temperature": self.temperature}
        hparams.update(use_sigmoid=self.use_sigmoid, mask=batch.pixel_mask if self.mask_ignored else None)
        loss, terms = dist_loss(logits_of(student), logits_of(teacher), **hparams, return_terms=True)
        out = {name: value.detach() for name, value in terms.items()}
        if self.aux_weight > 0:
            student_aux = auxiliary_logits_of(student, "student", "dist")
            aux = dist_loss(student_aux, auxiliary_logits_of(teacher, "teacher", "dist"), **hparams)
            loss = loss + self.aux_weight * aux
            out["aux"] = aux.detach()
        return {"loss": loss, **out}
