"""Distillation losses. Importing this package registers every built-in loss."""

# Importing a loss module registers its loss.
from . import (  # noqa: F401
    at,
    clkd,
    crd,
    ctkd,
    dist,
    dkd,
    fitnet,
    kd,
    kdsvd,
    mlkd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sdd,
    skd,
    sp,
    vid,
)
from ._functional import LOGIT_STANDARDIZATION_PAPER, standardize_logits
from .at import at_loss
from .base import DistillationLoss, DistillBatch, LossContext, LossNeeds, PaperRef, logits_of
from .clkd import clkd_loss
from .crd import crd_loss, crd_nce_loss
from .dist import dist_loss
from .dkd import dkd_loss
from .fitnet import fitnet_loss
from .kd import kd_loss
from .kdsvd import kdsvd_loss
from .mlkd import mlkd_loss
from .nst import nst_loss
from .ofd import ofd_loss, ofd_margin
from .pkt import pkt_loss
from .registry import (
    create_loss,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_loss_kwargs,
    validate_loss_kwargs,
)
from .reviewkd import hcl_loss
from .rkd import rkd_loss
from .sdd import sdd_kd_loss
from .skd import skd_loss, skd_total_loss
from .sp import sp_loss
from .vid import vid_loss

__all__ = [
    "LOGIT_STANDARDIZATION_PAPER",
    "DistillBatch",
    "DistillationLoss",
    "LossContext",
    "LossNeeds",
    "PaperRef",
    "at_loss",
    "clkd_loss",
    "crd_loss",
    "crd_nce_loss",
    "create_loss",
    "dist_loss",
    "dkd_loss",
    "fitnet_loss",
    "get_loss_class",
    "hcl_loss",
    "kd_loss",
    "kdsvd_loss",
    "list_losses",
    "logits_of",
    "mlkd_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margin",
    "pkt_loss",
    "register_loss",
    "resolve_loss_kwargs",
    "rkd_loss",
    "sdd_kd_loss",
    "skd_loss",
    "skd_total_loss",
    "sp_loss",
    "standardize_logits",
    "validate_loss_kwargs",
    "vid_loss",
]
