"""Distillation losses. Importing this package registers every built-in loss."""

# Importing a loss module registers its loss.
from hfkd.losses import (  # noqa: F401
    at,
    clkd,
    crd,
    ctkd,
    cwd,
    deit,
    dense,
    dist,
    dkd,
    embed,
    fitnet,
    kd,
    kdsvd,
    mimic,
    mlkd,
    nst,
    ofd,
    pkd,
    pkt,
    reviewkd,
    rkd,
    sdd,
    skd,
    sp,
    vid,
)
from hfkd.losses._functional import LOGIT_STANDARDIZATION_PAPER, standardize_logits
from hfkd.losses._image_features import ImageFeatures
from hfkd.losses.at import at_loss
from hfkd.losses.base import DistillationLoss, DistillBatch, LossContext, LossNeeds, PaperRef, logits_of
from hfkd.losses.clkd import clkd_loss
from hfkd.losses.crd import crd_loss, crd_nce_loss
from hfkd.losses.cwd import cwd_loss
from hfkd.losses.deit import deit_distillation_loss, deit_loss
from hfkd.losses.dense import dense_loss
from hfkd.losses.dist import dist_loss
from hfkd.losses.dkd import dkd_loss
from hfkd.losses.embed import embed_loss
from hfkd.losses.fitnet import fitnet_loss
from hfkd.losses.kd import kd_loss
from hfkd.losses.kdsvd import kdsvd_loss
from hfkd.losses.mimic import mimic_loss
from hfkd.losses.mlkd import mlkd_loss
from hfkd.losses.nst import nst_loss
from hfkd.losses.ofd import ofd_loss, ofd_margin
from hfkd.losses.pkd import pkd_loss
from hfkd.losses.pkt import pkt_loss
from hfkd.losses.registry import (
    CE_ONLY,
    create_loss,
    get_loss_class,
    list_losses,
    register_loss,
    resolve_loss_kwargs,
    validate_loss_kwargs,
)
from hfkd.losses.reviewkd import hcl_loss
from hfkd.losses.rkd import rkd_loss
from hfkd.losses.sdd import sdd_kd_loss
from hfkd.losses.skd import skd_loss, skd_total_loss
from hfkd.losses.sp import sp_loss
from hfkd.losses.vid import vid_loss

__all__ = [
    "CE_ONLY",
    "LOGIT_STANDARDIZATION_PAPER",
    "DistillBatch",
    "DistillationLoss",
    "ImageFeatures",
    "LossContext",
    "LossNeeds",
    "PaperRef",
    "at_loss",
    "clkd_loss",
    "crd_loss",
    "crd_nce_loss",
    "create_loss",
    "cwd_loss",
    "deit_distillation_loss",
    "deit_loss",
    "dense_loss",
    "dist_loss",
    "dkd_loss",
    "embed_loss",
    "fitnet_loss",
    "get_loss_class",
    "hcl_loss",
    "kd_loss",
    "kdsvd_loss",
    "list_losses",
    "logits_of",
    "mimic_loss",
    "mlkd_loss",
    "nst_loss",
    "ofd_loss",
    "ofd_margin",
    "pkd_loss",
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
