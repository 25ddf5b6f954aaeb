"""Pure helpers shared by the logit losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import loss_dtype


def as_loss_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to float32 (or keep float64) so loss math never runs in half precision."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else loss_dtype(tensors[0])
    return tuple(t.to(dtype) for t in tensors)


def kl_div_batchmean(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over the last dimension, averaged over the rows."""
    per_row = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    return per_row.mean()


def target_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean (B, C) mask that is True at each row's label."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels.long().unsqueeze(1), True)
