"""MLKD: Jin, Wang, Lin, multi-level logit distillation (instance, batch and class alignment).

Over 150 lines: the reference's mask weighting and its strong-sum quirk are documented here.
"""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses._functional import as_loss_dtype, median_confidence_masks
from hfkd.losses.base import DistillationLoss, DistillBatch, LossNeeds, PaperRef, check_positive, logits_of
from hfkd.losses.kd import kd_loss
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def correlation_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class- and batch-correlation alignment at one temperature (no T² factor, as in the reference).

    cc = Σ_{C×C} (P_tᵀP_t − P_sᵀP_s)² / C and bc = Σ_{B×B} (P_tP_tᵀ − P_sP_sᵀ)² / B, with P = softmax(z / T).
    """
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    batch, classes = student_logits.shape
    student_probs = (student_logits / temperature).softmax(dim=1)
    teacher_probs = (teacher_logits / temperature).softmax(dim=1)
    cc = (teacher_probs.t() @ teacher_probs - student_probs.t() @ student_probs).pow(2).sum() / classes
    bc = (teacher_probs @ teacher_probs.t() - student_probs @ student_probs.t()).pow(2).sum() / batch
    return cc, bc


def mlkd_loss(
    student_weak: torch.Tensor,
    teacher_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_strong: torch.Tensor,
    *,
    temperature: float = 4.0,
    logit_standardization: bool = False,
    reference_strong_sum: bool = True,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """kd_weak·frac_B + kd_strong + cc·frac_C + bc·frac_B, each summed over T ∈ {temperature, 3, 5, 2, 6}.

    With `reference_strong_sum` the strong KD sum takes the weak logits for the 4th and 5th temperatures (the
    reference's fixed 2 and 6), as its code does. `return_terms=True` also returns the four mask-weighted terms and
    the mask fractions `frac_batch`, `frac_class`.
    """
    batch_mask, class_mask = median_confidence_masks(teacher_weak)
    frac_batch, frac_class = batch_mask.float().mean(), class_mask.float().mean()
    kd_weak = kd_strong = cc = bc = 0.0
    for position, temp in enumerate((temperature, 3.0, 5.0, 2.0, 6.0)):
        kd_weak = kd_weak + kd_loss(
            student_weak, teacher_weak, temperature=temp, logit_standardization=logit_standardization
        )
        weak = reference_strong_sum and position >= 3
        strong_pair = (student_weak, teacher_weak) if weak else (student_strong, teacher_strong)
        kd_strong = kd_strong + kd_loss(*strong_pair, temperature=temp, logit_standardization=logit_standardization)
        class_term, batch_term = correlation_losses(student_weak, teacher_weak, temperature=temp)
        cc, bc = cc + class_term, bc + batch_term
    terms = {
        "kd_weak": kd_weak * frac_batch,
        "kd_strong": kd_strong,
        "cc": cc * frac_class,
        "bc": bc * frac_batch,
        "frac_batch": frac_batch,
        "frac_class": frac_class,
    }
    loss = terms["kd_weak"] + terms["kd_strong"] + terms["cc"] + terms["bc"]
    return (loss, terms) if return_terms else loss


@register_loss("mlkd")
class MLKDLoss(DistillationLoss):
    """Multi-level logit distillation: instance (KD), batch-correlation and class-correlation alignment over
    several temperatures, on a weakly and a strongly augmented view.

    Paper: Jin, Wang, Lin, *Multi-Level Logit Distillation*, CVPR 2023

    Objective, as the authors' `KD_ours` computes it: with T ∈ {`temperature`, 3, 5, 2, 6} and masks from the weak
    teacher's softmax at T=1 (batch mask: max probability ≤ its median; class mask: per-class probability summed
    over the batch ≤ its median), L = Σ_T KD_weak(T)·f_B + Σ_T KD_strong(T) + Σ_T cc_weak(T)·f_C + Σ_T bc_weak(T)·f_B,
    where KD is the T²-scaled KD loss, cc and bc the class and batch correlation losses (no T²), and f_B, f_C the
    fractions of True in the masks (the reference multiplies a scalar by the boolean mask and averages, so the masks
    only scale the terms: 0.5 for an even batch without ties). The reference's strong sum uses the weak logits at
    T=2 and T=6 (the 4th and 5th temperatures); kept on purpose (`reference_strong_sum=False` uses the strong ones
    throughout). CE runs on both views
    (CE(weak) + CE(strong)): the loss returns CE(strong) under `"ce"`, which the trainer adds to its CE. Reference
    weights: CE 0.1, KD 0.9 (`distill_ce_weight=0.1`, `distill_weight=0.9`); CIFAR T=4, ImageNet T=1. With
    `logit_standardization=True` the KD terms see z-scored logits and cc/bc the raw ones, as in the logit
    standardisation authors' MLKD. The masks and the correlation terms depend on the batch composition by design.

    Args:
        temperature (`float`, *optional*, defaults to `4.0`):
            The configured temperature, used with the fixed 3, 5, 2 and 6.
        logit_standardization (`bool`, *optional*, defaults to `False`):
            Z-score the logits of the KD terms (Sun et al., CVPR 2024).
        reference_strong_sum (`bool`, *optional*, defaults to `True`):
            Use the weak logits for the T=2 and T=6 terms of the strong KD sum, as the reference does.

    Returns:
        `dict` with `loss`, `kd_weak`, `kd_strong`, `cc`, `bc` (mask-weighted, summed over temperatures),
        `frac_batch`, `frac_class`, and `ce` (CE on the strong view) when the batch has labels.
    """

    needs = LossNeeds(strong_view=True)
    paper = PaperRef(
        title="Multi-Level Logit Distillation",
        authors="Ying Jin, Jiaqi Wang, Dahua Lin",
        venue="CVPR 2023",
        arxiv_id="",
        code_url="https://github.com/Jin-Ying/Multi-Level-Logit-Distillation",
        bibtex=(
            "@inproceedings{jin2023multi,\n"
            "  title={Multi-Level Logit Distillation},\n"
            "  author={Jin, Ying and Wang, Jiaqi and Lin, Dahua},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  pages={24276--24285},\n"
            "  year={2023}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        temperature: float = 4.0,
        logit_standardization: bool = False,
        reference_strong_sum: bool = True,
    ) -> None:
        super().__init__()
        check_positive("temperature", temperature, "mlkd")
        self.temperature = float(temperature)
        self.logit_standardization = bool(logit_standardization)
        self.reference_strong_sum = bool(reference_strong_sum)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.student_strong is None or batch.teacher_strong is None:
            raise UsageError("mlkd needs both models' outputs on the strong view (DistillBatch.student_strong).")
        loss, terms = mlkd_loss(
            logits_of(student),
            logits_of(teacher),
            logits_of(batch.student_strong),
            logits_of(batch.teacher_strong),
            temperature=self.temperature,
            logit_standardization=self.logit_standardization,
            reference_strong_sum=self.reference_strong_sum,
            return_terms=True,
        )
        result = {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
        if batch.cross_entropy is not None:
            # The reference's CE term covers both views: CE(weak) is the trainer's, CE(strong) this method's own.
            result["ce"] = batch.cross_entropy(logits_of(batch.student_strong))
        return result
