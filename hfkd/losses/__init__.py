"""Distillation losses. Importing this package registers every built-in loss."""

from . import dist, dkd, kd  # noqa: F401  (imports register the losses)
from .base import DistillationLoss, DistillBatch, LossContext, PaperRef, logits_of
from .dist import dist_loss
from .dkd import dkd_loss
from .kd import kd_loss
from .registry import (
    create_loss,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_loss_kwargs,
    validate_loss_kwargs,
)

__all__ = [
    "DistillBatch",
    "DistillationLoss",
    "LossContext",
    "PaperRef",
    "create_loss",
    "dist_loss",
    "dkd_loss",
    "get_loss_class",
    "kd_loss",
    "list_losses",
    "logits_of",
    "register_loss",
    "resolve_loss_kwargs",
    "validate_loss_kwargs",
]
