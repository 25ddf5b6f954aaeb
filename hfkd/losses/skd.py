"""SKD: Streamlined knowledge distillation (masked KD plus a Mahalanobis distance between batch Gram matrices)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._functional import as_loss_dtype, median_confidence_masks
from hfkd.losses.base import DistillationLoss, DistillBatch, PaperRef, check_positive, logits_of
from hfkd.losses.kd import kd_loss
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def skd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tikhonov: float = 0.1) -> torch.Tensor:
    """SKD's direction loss: the mean Mahalanobis norm of the rows of the Gram-matrix difference.

    n(z) = row-L2-normalised logits, G = n(z) n(z)ᵀ / C (B×B), D = G_s − G_t, Σ = cov(D) + λI with the columns of
    D as the variables and its rows as the observations (unbiased, B − 1), λ = `tikhonov`;
    L = (1/B) Σ_b sqrt(D_bᵀ Σ⁻¹ D_b). Σ is built from the student and stays in the graph. Depends on the batch.
    """
    batch_size, num_classes = student_logits.shape
    if batch_size < 2:
        raise UsageError(f"SKD's direction loss needs a batch of at least 2 samples, got {batch_size}.")
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    student_unit, teacher_unit = F.normalize(student_logits, dim=1), F.normalize(teacher_logits, dim=1)
    diff = student_unit @ student_unit.T / num_classes - teacher_unit @ teacher_unit.T / num_classes
    # torch.cov takes rows as variables, so the reference's torch.cov(diff.T) makes the columns of D the variables.
    # D is symmetric (a difference of Gram matrices), so cov(D) and cov(Dᵀ) coincide in value and gradient.
    eye = torch.eye(batch_size, dtype=diff.dtype, device=diff.device)
    cov = torch.cov(diff.T) + tikhonov * eye
    # With Σ = LLᵀ, D_bᵀ Σ⁻¹ D_b = ‖L⁻¹ D_b‖²: a triangular solve instead of the reference's explicit
    # cholesky_inverse, which is the same quantity, better conditioned and never negative.
    whitened = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), diff.T, upper=False)
    squared = whitened.pow(2).sum(dim=0)
    # sqrt has an infinite slope at 0 (a row of D exactly 0, e.g. student == teacher): give 0 with a zero gradient
    # there instead of the reference's NaN gradient; every other value is unchanged.
    positive = squared > 0
    distance = torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)
    return distance.mean()


def skd_total_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 4.0,
    tikhonov: float = 0.1,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SKD objective KD_T·frac_B + L_dir·frac_C (`skd_loss` is L_dir alone); `return_terms=True` also returns
    `kd` (with T²) and `direction`, both before masking, and the batch and class mask fractions."""
    kd = kd_loss(student_logits, teacher_logits, temperature=temperature)
    direction = skd_loss(student_logits, teacher_logits, tikhonov=tikhonov)
    batch_mask, class_mask = median_confidence_masks(teacher_logits)
    # The reference multiplies each scalar loss by a boolean mask and averages, i.e. scales it by the fraction of
    # True entries (0.5 for an even count without ties).
    frac_batch, frac_class = batch_mask.to(kd.dtype).mean(), class_mask.to(kd.dtype).mean()
    loss = kd * frac_batch + direction * frac_class
    terms = {"kd": kd, "direction": direction, "frac_batch": frac_batch, "frac_class": frac_class}
    return (loss, terms) if return_terms else loss


@register_loss("skd")
class SKDLoss(DistillationLoss):
    """Streamlined knowledge distillation: KD scaled by the low-confidence batch fraction plus a direction loss.

    Paper: *Streamlined Knowledge Distillation*, CVPR 2026 (official code HyunJunSik/StreamLined; its README
    lists no authors and no arXiv id, so none are given here).

    Objective (`Distiller/SKD.py`): L = KD_T(s, t)·frac_B + L_dir(s, t)·frac_C. KD_T is T²·KL at T = `temperature`;
    L_dir is `skd_loss` with λ = `tikhonov`. frac_B is the fraction of samples whose teacher max-probability (T=1)
    is ≤ its batch median, frac_C the fraction of classes whose teacher probability summed over the batch is ≤ its
    median (the MLKD masks); the reference multiplies each scalar loss by its boolean mask and averages, so only
    these fractions survive. The reference's total is ce·CE + kd·L with ce 0.1 and kd 0.9: use
    `distill_ce_weight=0.1, distill_weight=0.9`, and its CIFAR-100 driver's SGD lr 0.1 (momentum 0.9, wd 5e-4,
    batch 64, 240 epochs, ×0.1 at 150/180/210). A code comment tunes ce 0.5 / kd 0.5 for res32x4 → res8x4.
    The Gram matrices, the covariance and both masks are taken over the batch, so the loss depends on the batch
    composition by design: per-device batch size changes it. Cost O(B²C + B³).

    Args:
        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature T of the KD term.
        tikhonov (`float`, *optional*, defaults to `0.1`):
            Tikhonov regulariser λ added to the diagonal of the B×B covariance before the Cholesky factorisation.

    Returns:
        `dict` with `loss`, `kd` (KD_T before masking), `direction` (L_dir before masking), `frac_batch` and
        `frac_class`.
    """

    paper = PaperRef(
        title="Streamlined Knowledge Distillation",
        authors="not listed (official code: https://github.com/HyunJunSik/StreamLined)",
        venue="CVPR 2026",
        arxiv_id="",
        code_url="https://github.com/HyunJunSik/StreamLined",
        bibtex=(
            "@inproceedings{streamlined2026skd,\n"
            "  title={Streamlined Knowledge Distillation},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2026},\n"
            "  note={Code: https://github.com/HyunJunSik/StreamLined}\n"
            "}"
        ),
    )

    def __init__(self, *, temperature: float = 4.0, tikhonov: float = 0.1) -> None:
        super().__init__()
        check_positive("temperature", temperature, "skd")
        check_positive("tikhonov", tikhonov, "skd")
        self.temperature, self.tikhonov = float(temperature), float(tikhonov)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        loss, terms = skd_total_loss(
            logits_of(student),
            logits_of(teacher),
            temperature=self.temperature,
            tikhonov=self.tikhonov,
            return_terms=True,
        )
        return {"loss": loss, **{name: value.detach() for name, value in terms.items()}}
