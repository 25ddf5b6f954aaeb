"""Distillation losses. Importing this package registers every built-in loss."""

from . import clkd, ctkd, dist, dkd, kd, mlkd, skd  # noqa: F401  (imports register the losses)
from ._functional import LOGIT_STANDARDIZATION_PAPER, standardize_logits
from .base import DistillationLoss, DistillBatch, LossContext, PaperRef, logits_of
from .clkd import clkd_loss
from .dist import dist_loss
from .dkd import dkd_loss
from .kd import kd_loss
from .mlkd import mlkd_loss
from .registry import (
    create_loss,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_loss_kwargs,
    validate_loss_kwargs,
)
from .skd import skd_loss

__all__ = [
    "LOGIT_STANDARDIZATION_PAPER",
    "DistillBatch",
    "DistillationLoss",
    "LossContext",
    "PaperRef",
    "clkd_loss",
    "create_loss",
    "dist_loss",
    "dkd_loss",
    "get_loss_class",
    "kd_loss",
    "list_losses",
    "logits_of",
    "mlkd_loss",
    "register_loss",
    "resolve_loss_kwargs",
    "skd_loss",
    "standardize_logits",
    "validate_loss_kwargs",
]
