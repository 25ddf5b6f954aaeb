"""DeiT: Touvron et al., distillation through attention (a distillation token with its own head)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._functional import as_loss_dtype
from hfkd.losses.base import DistillationLoss, DistillBatch, LossNeeds, PaperRef, check_positive, logits_of
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError

DISTILLATION_TYPES = ("hard", "soft")


def deit_distillation_loss(
    distillation_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    distillation_type: str = "hard",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The distillation head's term of DeiT (its `losses.py`, `DistillationLoss`), on (B, C) logits.

    `hard`: CE(distillation_logits, argmax_c teacher_logits), averaged over the batch, no label smoothing; τ unused.
    `soft`: τ² · Σ_i Σ_c KL terms of softmax(teacher / τ) ‖ softmax(distillation / τ), divided by B·C (the number
    of logits), as DeiT's code divides by `outputs_kd.numel()`: 1/C of the usual batch-mean KD.
    """
    if distillation_type not in DISTILLATION_TYPES:
        raise UsageError(f"deit: `distillation_type` must be 'hard' or 'soft', got {distillation_type!r}.")
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    distillation_logits, teacher_logits = as_loss_dtype(distillation_logits, teacher_logits.detach())
    if distillation_logits.shape != teacher_logits.shape or distillation_logits.ndim != 2:
        raise UsageError(
            f"deit: the distillation head's and the teacher's logits must have the same (B, C) shape, got "
            f"{tuple(distillation_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if distillation_type == "hard":
        return F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=1))
    student_log_probs = F.log_softmax(distillation_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    kl_sum = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    # DeiT's code: T² as in KD, and the sum divided by B·C, which reproduces the legacy 'mean' reduction.
    return kl_sum * temperature**2 / distillation_logits.numel()


def base_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of (B, C) logits against class indices (B,), or against soft targets (B, C) (timm's
    `SoftTargetCrossEntropy`, DeiT's base criterion under Mixup/CutMix), averaged over the batch."""
    (logits,) = as_loss_dtype(logits)
    if labels.is_floating_point() and labels.ndim == 2:
        return -(labels.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    return F.cross_entropy(logits, labels.long())


def deit_loss(
    cls_logits: torch.Tensor,
    distillation_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    distillation_type: str = "hard",
    alpha: float = 0.5,
    temperature: float = 1.0,
    base_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = base_cross_entropy,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1 − α) · base_criterion(cls_logits, labels) + α · deit_distillation_loss(distillation_logits,
    teacher_logits): the class head learns from the labels, the distillation head from the teacher (DeiT's
    `DistillationLoss`, whose `base_criterion` is the run's CE). `return_terms=True` also returns
    `{"base", "distillation"}` (unweighted)."""
    base = base_criterion(cls_logits, labels)
    distillation = deit_distillation_loss(
        distillation_logits, teacher_logits, distillation_type=distillation_type, temperature=temperature
    )
    loss = (1.0 - alpha) * base + alpha * distillation
    return (loss, {"base": base, "distillation": distillation}) if return_terms else loss


def head_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls_logits, distillation_logits) of a student output with a distillation head."""
    fields = [
        output.get(name) if isinstance(output, dict) else getattr(output, name, None)
        for name in ("cls_logits", "distillation_logits")
    ]
    if any(field is None for field in fields):
        raise UsageError(
            f"deit trains a student with a distillation head, whose output carries `cls_logits` and "
            f"`distillation_logits`; got a {type(output).__name__} without them. Use a DeiT student with a "
            "distillation token (transformers' DeiTForImageClassificationWithTeacher, timm's "
            "deit_*_distilled_patch16_224), or another loss (kd, dist, ...)."
        )
    return fields[0], fields[1]


@register_loss("deit")
class DeiTLoss(DistillationLoss):
    """DeiT's distillation through attention: the class token's head learns from the labels, the distillation
    token's head from the teacher.

    Paper: Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, *Training data-efficient image transformers &
    distillation through attention*, ICML 2021, arXiv:2012.12877

    Objective (facebookresearch/deit `losses.py`, `DistillationLoss`): (1 − α) · CE(cls_logits, y) + α · D, where
    α = `alpha`, CE is the run's cross-entropy of the **class head** against the labels (label smoothing, or the
    soft targets of Mixup/CutMix with the smoothing folded in: DeiT's `SoftTargetCrossEntropy`), and D is the
    **distillation head**'s term against the teacher, `distillation_type`:
    `hard` (the paper's distilled models): CE(distillation_logits, argmax teacher_logits), no smoothing, τ unused;
    `soft`: τ² · KL(softmax(teacher / τ) ‖ softmax(distillation_logits / τ)) summed over batch and classes and
    divided by B·C, as DeiT's code does (its paper writes the KL per sample; the code's is 1/C of it), τ =
    `temperature`. The teacher sees the student's (mixed) images. Evaluation and the saved student predict with the
    mean of both heads (`logits`), as both libraries do at inference.

    The loss owns α: it returns (1 − α) · CE under `"ce"`, which replaces the trainer's CE of the averaged
    `logits` (`replaces_task_loss`), and α · D as its `"loss"`, so the default `distill_ce_weight=1.0,
    distill_weight=1.0` give DeiT's total exactly (other weights scale each term further). The student needs a
    distillation head (`needs.distillation_head`: transformers' `DeiTForImageClassificationWithTeacher`, timm's
    `deit_*_distilled_patch16_224` switched to `set_distilled_training(True)`); any other is refused before
    training. Paper defaults: α 0.5, τ 1, hard (DeiT's `main.py` defaults to no distillation; its distilled
    models used `--distillation-type hard`).

    Args:
        distillation_type (`str`, *optional*, defaults to `"hard"`):
            `"hard"` (CE against the teacher's top class) or `"soft"` (KL at `temperature`).
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight α of the distillation head's term; the class head's CE takes 1 − α. In [0, 1].
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature τ of the soft term (unused by `hard`).

    Returns:
        `dict` with `loss` (α · D), `distillation` (D, unweighted), and, when the batch has labels, `ce`
        ((1 − α) · CE of the class head) and `base` (that CE, unweighted).
    """

    needs = LossNeeds(distillation_head=True)
    replaces_task_loss = True
    card_terms = ("(1 − alpha) × CE(class head, labels)", "alpha × DEIT(distillation head, teacher)")
    paper = PaperRef(
        title="Training data-efficient image transformers & distillation through attention",
        authors="Hugo Touvron, Matthieu Cord, Matthijs Douze, Francisco Massa, Alexandre Sablayrolles, Hervé Jégou",
        venue="ICML 2021",
        arxiv_id="2012.12877",
        code_url="https://github.com/facebookresearch/deit",
        bibtex=(
            "@inproceedings{touvron2021training,\n"
            "  title={Training data-efficient image transformers \\& distillation through attention},\n"
            "  author={Touvron, Hugo and Cord, Matthieu and Douze, Matthijs and Massa, Francisco and Sablayrolles, "
            "Alexandre and J{\\'e}gou, Herv{\\'e}},\n"
            "  booktitle={International Conference on Machine Learning},\n"
            "  pages={10347--10357},\n"
            "  year={2021}\n"
            "}"
        ),
    )

    def __init__(self, *, distillation_type: str = "hard", alpha: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise UsageError(
                f"deit: `distillation_type` must be 'hard' (DeiT's distilled models) or 'soft', got "
                f"{distillation_type!r}. For no distillation at all train with --loss ce."
            )
        if not 0.0 <= alpha <= 1.0:
            raise UsageError(f"deit: `alpha` weighs the distillation head's term in [0, 1] (0.5), got {alpha!r}.")
        check_positive("temperature", temperature, "deit")
        self.distillation_type, self.alpha, self.temperature = distillation_type, float(alpha), float(temperature)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        cls_logits, distillation_logits = head_logits(student)
        distillation = deit_distillation_loss(
            distillation_logits,
            logits_of(teacher),
            distillation_type=self.distillation_type,
            temperature=self.temperature,
        )
        result = {"loss": self.alpha * distillation, "distillation": distillation.detach()}
        # The class head's CE is the run's (smoothing, soft targets, unlabelled samples left out): DeiT's base term.
        if batch.cross_entropy is not None:
            base = batch.cross_entropy(cls_logits)
            result.update(ce=(1.0 - self.alpha) * base, base=base.detach())
        return result
