"""CLKD: Zhang et al., class-aware logit distillation (instance, class and class-correlation terms)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._functional import as_loss_dtype
from hfkd.losses.base import DistillationLoss, DistillBatch, PaperRef, check_non_negative, logits_of
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def _class_covariance(logits: torch.Tensor) -> torch.Tensor:
    centred = logits - logits.mean(dim=0, keepdim=True)
    # Divided by C − 1, not B − 1, exactly as StreamLined's CLKD.py: a constant factor on the correlation term.
    return centred.T @ centred / (logits.shape[1] - 1)


def clkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    instance_weight: float = 0.5,
    class_weight: float = 1.0,
    correlation_weight: float = 0.4,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """instance_weight·instance + class_weight·class + correlation_weight·class_corr.

    The defaults give StreamLined's 0.5·(instance + 2·class) + 0.4·class_corr exactly. `return_terms=True` also
    returns the unweighted `instance`, `class` and `class_corr`.
    """
    if student_logits.shape[-1] < 2:
        raise UsageError(f"CLKD needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}.")
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    # F.mse_loss averages over all B·C elements, as the reference calls it.
    instance = F.mse_loss(F.normalize(student_logits, dim=1), F.normalize(teacher_logits, dim=1))
    class_ = F.mse_loss(F.normalize(student_logits, dim=0), F.normalize(teacher_logits, dim=0))
    num_classes = student_logits.shape[1]
    diff = _class_covariance(student_logits) - _class_covariance(teacher_logits)
    class_corr = torch.linalg.matrix_norm(diff, ord="fro") / num_classes**2
    loss = instance_weight * instance + class_weight * class_ + correlation_weight * class_corr
    return (loss, {"instance": instance, "class": class_, "class_corr": class_corr}) if return_terms else loss


@register_loss("clkd")
class CLKDLoss(DistillationLoss):
    """Class-aware logit distillation: match normalised logits per sample and per class, and class covariances.

    Paper: Zhang, Liu, Hopcroft, He, *Class-aware Information for Logit-based Knowledge Distillation*, arXiv 2022,
    arXiv:2211.14773

    Objective, as implemented by the StreamLined (SKD) authors in `Distiller/CLKD.py`, whose CIFAR-100 baseline
    this reproduces: instance = MSE(row-L2-normalised s, row-L2-normalised t); class = MSE of the
    column-L2-normalised logits (each class's logits over the batch); class_corr = ‖Cov_s − Cov_t‖_F / C², with
    Cov = (z − batch mean)ᵀ(z − batch mean) / (C − 1) (C×C; the reference divides by C − 1, not B − 1).
    MSE averages over all B·C elements (`F.mse_loss`'s default) and the Frobenius norm is not squared.
    L = `instance_weight`·instance + `class_weight`·class + `correlation_weight`·class_corr. The reference writes
    μ·(instance + β·class) + ν·class_corr with μ 0.5, β 2, ν 0.4 and CE 0.1, so the defaults (0.5, 1.0, 0.4)
    reproduce it with `distill_ce_weight=0.1, distill_weight=1.0`. The class and correlation terms are taken
    over the batch, so the loss depends on the batch composition by design: per-device batch size changes it.

    Args:
        instance_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the instance-level term (μ).
        class_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the class-level term (μ·β).
        correlation_weight (`float`, *optional*, defaults to `0.4`):
            Weight of the class-correlation term (ν).

    Returns:
        `dict` with `loss`, `instance`, `class` and `class_corr` (the unweighted terms).
    """

    paper = PaperRef(
        title="Class-aware Information for Logit-based Knowledge Distillation",
        authors="Shuoxi Zhang, Hanpeng Liu, John E. Hopcroft, Kun He",
        venue="arXiv 2022",
        arxiv_id="2211.14773",
        bibtex=(
            "@article{zhang2022clkd,\n"
            "  title={Class-aware Information for Logit-based Knowledge Distillation},\n"
            "  author={Zhang, Shuoxi and Liu, Hanpeng and Hopcroft, John E. and He, Kun},\n"
            "  journal={arXiv preprint arXiv:2211.14773},\n"
            "  year={2022}\n"
            "}"
        ),
    )

    def __init__(
        self, *, instance_weight: float = 0.5, class_weight: float = 1.0, correlation_weight: float = 0.4
    ) -> None:
        super().__init__()
        check_non_negative("instance_weight", instance_weight, "clkd")
        check_non_negative("class_weight", class_weight, "clkd")
        check_non_negative("correlation_weight", correlation_weight, "clkd")
        self.instance_weight, self.class_weight = float(instance_weight), float(class_weight)
        self.correlation_weight = float(correlation_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        loss, terms = clkd_loss(
            logits_of(student),
            logits_of(teacher),
            instance_weight=self.instance_weight,
            class_weight=self.class_weight,
            correlation_weight=self.correlation_weight,
            return_terms=True,
        )
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
