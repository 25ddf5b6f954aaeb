"""DKD: Zhao et al., decoupled knowledge distillation (target and non-target terms).

Over 150 lines: the log-space TCKD/NCKD and the paper's and logit-standardisation settings are documented here.
"""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses._functional import as_loss_dtype, standardize_logits, target_mask, warmup_factor
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    OBJECT_DETECTION,
    DistillationLoss,
    DistillBatch,
    LossNeeds,
    PaperRef,
    check_non_negative,
    check_positive,
    logits_of,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def _binary_kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)


def dkd_terms_per_sample(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 4.0,
    logit_standardization: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TCKD and NCKD of every sample (two (B,) tensors), each multiplied by T².

    With `logit_standardization=True` both logits first go through `standardize_logits` (Sun et al., CVPR 2024).
    """
    if student_logits.shape[-1] < 2:
        raise UsageError(f"DKD needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}.")
    # The teacher is a target: no gradient flows into it even if its logits require grad.
    student_logits, teacher_logits = as_loss_dtype(student_logits, teacher_logits.detach())
    if logit_standardization:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    gt = target_mask(student_logits, labels)
    log_terms = []
    for logits in (teacher_logits / temperature, student_logits / temperature):
        # Everything stays in log space: mdistiller takes log() of summed probabilities, which is -inf (and the
        # loss inf) once the student's target probability underflows. logsumexp over the non-target classes is
        # finite for finite logits, so the binary distribution and the non-target softmax are too.
        log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
        log_norm_nontarget = torch.logsumexp(logits.masked_fill(gt, float("-inf")), dim=1, keepdim=True)
        log_target = (logits.masked_fill(~gt, 0.0).sum(1, keepdim=True)) - log_norm
        log_binary = torch.cat([log_target, log_norm_nontarget - log_norm], dim=1)
        # Softmax over the C-1 non-target classes. This equals mdistiller's softmax(z/T - 1000·onehot) without
        # depending on the logit scale. The target entry is set to 0 here, not only masked out of the sum below:
        # a teacher whose target logit leads by more than ~88·T would make its exp() inf there, and inf × 0 a NaN
        # gradient (a detection teacher's RoI rows do).
        log_nontarget = (logits - log_norm_nontarget).masked_fill(gt, 0.0)
        log_terms.append((log_binary, log_nontarget))
    (teacher_binary, teacher_nontarget), (student_binary, student_nontarget) = log_terms
    tckd = _binary_kl(teacher_binary, student_binary)
    nckd_elements = teacher_nontarget.exp() * (teacher_nontarget - student_nontarget)
    nckd = nckd_elements.masked_fill(gt, 0.0).sum(-1)
    # T² as in the paper's code, applied to both terms.
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    return_terms: bool = False,
    logit_standardization: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha·TCKD + beta·NCKD, each averaged over the batch (no warm-up factor; `DKDLoss` applies it), optionally on
    standardised logits; `return_terms=True` also returns `{"tckd", "nckd"}` (T²-scaled, unweighted)."""
    tckd, nckd = dkd_terms_per_sample(
        student_logits, teacher_logits, labels, temperature=temperature, logit_standardization=logit_standardization
    )
    tckd, nckd = tckd.mean(), nckd.mean()
    loss = alpha * tckd + beta * nckd
    return (loss, {"tckd": tckd, "nckd": nckd}) if return_terms else loss


@register_loss("dkd")
class DKDLoss(DistillationLoss):
    """Decoupled knowledge distillation: target-class and non-target-class terms weighted separately.

    Paper: Zhao, Cui, Song, Qiu, Liang, *Decoupled Knowledge Distillation*, CVPR 2022, arXiv:2203.08679

    Objective: warmup(epoch) · (α·TCKD + β·NCKD), where TCKD is T²·KL between the teacher's and the student's
    binary (target, non-target) probabilities and NCKD is T²·KL between their softmaxes over the non-target
    classes only; both summed per sample and averaged over the batch. α = `alpha`, β = `beta`,
    T = `temperature`. warmup(epoch) = min((⌊epoch⌋ + 1) / `warmup_epochs`, 1): mdistiller multiplies by
    min(epoch / WARMUP, 1) with a 1-based integer epoch, and the trainer passes a 0-based fractional epoch,
    so ⌊epoch⌋ + 1 reproduces its schedule exactly (1/20 during the first epoch on CIFAR, 1 from the start
    with warmup 1 on ImageNet). Paper defaults: α 1, β 8, T 4, warm-up 20 epochs (CIFAR-100); ImageNet uses
    T 1, warm-up 1 and β 0.5 (ResNet-34 → ResNet-18) or 2 (ResNet-50 → MobileNetV1).

    Logit standardisation (Sun, Ren, Li, Wang, Cao, *Logit Standardization in Knowledge Distillation*, CVPR 2024,
    arXiv:2403.01427): with `logit_standardization=True` each row of both logits is replaced by
    (z − mean) / (unbiased std + 1e-7) before both terms; T becomes the "base temperature" and T² is kept, as in
    the authors' mdistiller fork. Their CLI `--logit-stand --base-temp 2 --kd-weight 9` multiplies α and β by 9
    and sets T=2 with the CE weight unchanged at 1.0; from the defaults that is `alpha=9.0, beta=72.0, temperature=2.0,
    logit_standardization=True` with `distill_ce_weight=1.0, distill_weight=1.0`.

    Args:
        alpha (`float`, *optional*, defaults to `1.0`):
            Weight α of the target-class term.
        beta (`float`, *optional*, defaults to `8.0`):
            Weight β of the non-target-class term.
        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature T.
        warmup_epochs (`float`, *optional*, defaults to `20.0`):
            Epochs over which the loss ramps up linearly; 0 disables the warm-up.
        logit_standardization (`bool`, *optional*, defaults to `False`):
            Z-score each row of the student and teacher logits before the softmax.

    Returns:
        `dict` with `loss`, `tckd`, `nckd` (unweighted, T²-scaled) and `warmup` (the factor applied).
    """

    needs = LossNeeds(labels=True)
    # Detection: on a Faster R-CNN's sampled RoIs, background included (hfkd.tasks.detection.torchvision_distill).
    tasks = frozenset({IMAGE_CLASSIFICATION, OBJECT_DETECTION})
    paper = PaperRef(
        title="Decoupled Knowledge Distillation",
        authors="Borui Zhao, Quan Cui, Renjie Song, Yiyu Qiu, Jiajun Liang",
        venue="CVPR 2022",
        arxiv_id="2203.08679",
        bibtex=(
            "@inproceedings{zhao2022dkd,\n"
            "  title={Decoupled Knowledge Distillation},\n"
            "  author={Zhao, Borui and Cui, Quan and Song, Renjie and Qiu, Yiyu and Liang, Jiajun},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2022}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        check_non_negative("alpha", alpha, "dkd")
        check_non_negative("beta", beta, "dkd")
        check_positive("temperature", temperature, "dkd")
        check_non_negative("warmup_epochs", warmup_epochs, "dkd")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature, self.warmup_epochs = float(temperature), float(warmup_epochs)
        if not isinstance(logit_standardization, bool):
            raise UsageError(f"dkd: `logit_standardization` must be true or false, got {logit_standardization!r}.")
        self.logit_standardization = logit_standardization

    def warmup_factor(self, epoch: float) -> float:
        return warmup_factor(epoch, self.warmup_epochs)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.labels is None:
            raise UsageError("dkd needs the labels of the batch; pass a `labels` column to the trainer.")
        loss, terms = dkd_loss(
            logits_of(student),
            logits_of(teacher),
            batch.labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            logit_standardization=self.logit_standardization,
            return_terms=True,
        )
        factor = self.warmup_factor(batch.epoch)
        return {
            "loss": factor * loss,
            **{name: value.detach() for name, value in terms.items()},
            "warmup": torch.tensor(factor, dtype=loss.dtype, device=loss.device),
        }
