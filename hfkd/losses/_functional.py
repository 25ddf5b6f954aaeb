"""Pure helpers shared by the logit losses, and the convention that every loss file follows.

Convention: a loss's objective is composed in one place, a pure module-level function of its file (`<key>_loss`;
SKD `skd_total_loss`, CTKD `kd_loss`, SDD `sdd_kd_loss`/`sdd_dkd_loss`, ReviewKD `hcl_loss`) that its module calls
once per step, and where the module logs components that function takes `return_terms: bool = False` and then
returns `(loss, terms)`, `terms` mapping each component's log name to its tensor, so that the module adds nothing
but its inputs (stage selection, trainable adapters) and the `feat_weight` or warm-up factor that its docstring's
objective states. `tests/test_loss_functions.py` holds every registered loss to this: module loss == function value.
"""

from __future__ import annotations

import math

import torch

from hfkd.losses.base import PaperRef, loss_dtype
from hfkd.utils.errors import UsageError


def as_loss_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to float32 (or keep float64) so loss math never runs in half precision."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else loss_dtype(tensors[0])
    return tuple(t.to(dtype) for t in tensors)


def warmup_factor(epoch: float, warmup_epochs: float) -> float:
    """min((⌊epoch⌋ + 1) / warmup_epochs, 1): mdistiller's min(epoch / WARMUP, 1) on its 1-based integer epoch,
    from the trainer's 0-based fractional epoch; 1 when `warmup_epochs` is 0 (DKD, SD-DKD and ReviewKD)."""
    if warmup_epochs == 0:
        return 1.0
    return min((math.floor(epoch) + 1) / warmup_epochs, 1.0)


def target_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, C) mask that is True at each row's label."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.long().unsqueeze(1), True)


LOGIT_STANDARDIZATION_PAPER = PaperRef(
    title="Logit Standardization in Knowledge Distillation",
    authors="Shangquan Sun, Wenqi Ren, Jingzhi Li, Rui Wang, Xiaochun Cao",
    venue="CVPR 2024",
    arxiv_id="2403.01427",
    bibtex=(
        "@inproceedings{sun2024logit,\n"
        "  title={Logit Standardization in Knowledge Distillation},\n"
        "  author={Sun, Shangquan and Ren, Wenqi and Li, Jingzhi and Wang, Rui and Cao, Xiaochun},\n"
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
        "  year={2024}\n"
        "}"
    ),
)
"""The paper behind `standardize_logits` and the `logit_standardization` flag of KD and DKD."""


def standardize_logits(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Z-score each row: (z − mean) / (std + 1e-7), with the unbiased (C − 1) std, along the class dimension `dim`.

    The logit standardisation of Sun et al., *Logit Standardization in Knowledge Distillation*, CVPR 2024,
    arXiv:2403.01427, exactly as their `normalize()`: `torch.std`'s default unbiased estimate and 1e-7 added to
    the std (not to the variance). A constant row maps to zeros. Runs in float32, or float64 for float64 input.
    Dense (B, C, H, W) logits pass `dim=1`: each pixel's class vector is one row.
    """
    if logits.shape[dim] < 2:
        raise UsageError(
            f"Logit standardisation needs at least 2 classes (an unbiased std over one value is undefined), "
            f"got logits of shape {tuple(logits.shape)}."
        )
    (logits,) = as_loss_dtype(logits)
    mean = logits.mean(dim=dim, keepdim=True)
    std = logits.std(dim=dim, keepdim=True)
    return (logits - mean) / (std + 1e-7)


def check_position_mask(mask: torch.Tensor, logits: torch.Tensor, loss_key: str) -> torch.Tensor:
    """`mask` as a bool tensor shaped like `logits` without its class dimension 1 ((B,) or (B, H, W)), on its device.

    Dense losses average over the positions where the mask is True (the pixels not ignored by the labels).
    """
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(mask.shape) != expected:
        raise UsageError(
            f"{loss_key}: the mask has shape {tuple(mask.shape)} but the logits {tuple(logits.shape)} need a mask of "
            f"shape {expected} (one value per position, at the logits' resolution)."
        )
    return mask.to(device=logits.device, dtype=torch.bool)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of `values` over the positions where `mask` is True (all of them without a mask); 0 when none is."""
    if mask is None:
        return values.mean()
    # Dividing by at least 1: a micro-batch whose pixels are all ignored contributes 0, not NaN.
    return values.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def median_confidence_masks(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MLKD's median masks from the teacher's softmax at temperature 1.

    Returns a boolean (B,) batch mask, True where the sample's max probability is ≤ the median of those maxima,
    and a boolean (C,) class mask, True where the class's probability summed over the batch is ≤ the median of
    those sums. Both medians are the 50th percentile with linear interpolation (NumPy's `np.percentile(x, 50)`,
    which the MLKD and SKD code call; `torch.quantile`'s default), so with an even count and no ties each mask
    holds exactly half of the entries. The masks depend on the composition of the batch.
    """
    (teacher_logits,) = as_loss_dtype(teacher_logits.detach())
    probs = teacher_logits.softmax(dim=-1)
    confidence = probs.max(dim=-1).values
    class_confidence = probs.sum(dim=0)
    batch_mask = confidence.le(torch.quantile(confidence, 0.5))
    class_mask = class_confidence.le(torch.quantile(class_confidence, 0.5))
    return batch_mask, class_mask
