"""DIST: Huang et al., relation-based distillation from a stronger teacher."""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses._functional import as_loss_dtype
from hfkd.losses.base import DistillationLoss, DistillBatch, PaperRef, check_non_negative, check_positive, logits_of
from hfkd.losses.registry import register_loss


def _row_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    # eps is added to the product of the norms, exactly where the authors' code adds it.
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """τ²·(β·inter + γ·intra) on softmax(z/τ), as in the authors' `dist_kd.py`; inter and intra are the relation
    losses 1 − mean Pearson correlation (unscaled), returned as `terms` with `return_terms=True`."""
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    student_probs = (student_logits / temperature).softmax(dim=1)
    teacher_probs = (teacher_logits / temperature).softmax(dim=1)
    inter = 1 - _row_pearson(student_probs, teacher_probs).mean()
    intra = 1 - _row_pearson(student_probs.t(), teacher_probs.t()).mean()
    loss = temperature**2 * (beta * inter + gamma * intra)
    return (loss, {"inter": inter, "intra": intra}) if return_terms else loss


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

    Args:
        beta (`float`, *optional*, defaults to `1.0`):
            Weight β of the inter-class (per-sample) relation term.
        gamma (`float`, *optional*, defaults to `1.0`):
            Weight γ of the intra-class (per-class) relation term.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature τ.

    Returns:
        `dict` with `loss`, `inter` and `intra` (the unweighted relation losses, before τ²).
    """

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

    def __init__(self, *, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        check_non_negative("beta", beta, "dist")
        check_non_negative("gamma", gamma, "dist")
        check_positive("temperature", temperature, "dist")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        loss, terms = dist_loss(
            logits_of(student),
            logits_of(teacher),
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
            return_terms=True,
        )
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
