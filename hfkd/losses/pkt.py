"""PKT: Passalis & Tefas, probabilistic knowledge transfer of cosine-similarity distributions."""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses._feature_functional import feature_pairs, without_autocast
from hfkd.losses._feature_maps import pooled_features
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    DistillationLoss,
    DistillBatch,
    LossNeeds,
    PaperRef,
    check_non_negative,
)
from hfkd.losses.registry import register_loss

_EPS = 1e-7


def _conditional_probabilities(embeds: torch.Tensor) -> torch.Tensor:
    unit = embeds / (embeds.norm(dim=1, keepdim=True) + _EPS)
    unit = torch.where(unit.isnan(), 0.0, unit)
    # Cosine similarity shifted to [0, 1], then each row normalised into a distribution over the batch.
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


@without_autocast
def pkt_loss(student_embeds: torch.Tensor, teacher_embeds: torch.Tensor) -> torch.Tensor:
    """mean over the B × B entries of q·log((q + ε)/(p + ε)), ε = 1e-7, q the teacher's and p the student's
    row-normalised (cos + 1)/2 similarities. Embeddings are (B, D); D may differ between the two models."""
    ((student, teacher),) = feature_pairs([student_embeds.flatten(1)], [teacher_embeds.flatten(1)], "pkt", maps=False)
    target = _conditional_probabilities(teacher)
    model = _conditional_probabilities(student)
    return (target * torch.log((target + _EPS) / (model + _EPS))).mean()


@register_loss("pkt")
class PKTLoss(DistillationLoss):
    """Probabilistic knowledge transfer: match the teacher's distribution of pairwise cosine similarities.

    Paper: Passalis, Tefas, *Learning Deep Representations with Probabilistic Knowledge Transfer*, ECCV 2018,
    arXiv:1803.10837

    Objective: on the globally pooled last feature maps (mdistiller's `pooled_feat`), the cosine-similarity
    kernel K(a, b) = (cos(a, b) + 1)/2 gives conditional probabilities p_{j|i} = K(x_i, x_j) / Σ_k K(x_i, x_k)
    for the student and q_{j|i} for the teacher (the paper's cosine kernel);
    L = mean_{i,j} q_{j|i} log((q_{j|i} + ε)/(p_{j|i} + ε)), ε = 1e-7, i.e. the paper's KL divergence averaged
    over the B × B entries as in the authors' code, times `feat_weight`. The embedding sizes may differ. The
    distributions run over the other samples of the micro-batch, so the loss depends on the batch composition by
    design: the per-device batch size changes it.

    Reproduces mdistiller's `PKT.py` with `feat_weight=30000` (its FEAT_WEIGHT): with `distill_ce_weight=1.0`
    (its CE_WEIGHT) and `distill_weight=1.0` the trainer's total equals mdistiller's.

    Args:
        feat_weight (`float`, *optional*, defaults to `30000.0`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the PKT loss) and `pkt` (the unweighted PKT loss).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Learning Deep Representations with Probabilistic Knowledge Transfer",
        authors="Nikolaos Passalis, Anastasios Tefas",
        venue="ECCV 2018",
        arxiv_id="1803.10837",
        bibtex=(
            "@inproceedings{passalis2018learning,\n"
            "  title={Learning Deep Representations with Probabilistic Knowledge Transfer},\n"
            "  author={Passalis, Nikolaos and Tefas, Anastasios},\n"
            "  booktitle={Proceedings of the European Conference on Computer Vision (ECCV)},\n"
            "  year={2018}\n"
            "}"
        ),
    )

    def __init__(self, *, feat_weight: float = 30000.0) -> None:
        super().__init__()
        check_non_negative("feat_weight", feat_weight, "pkt")
        self.feat_weight = float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value = pkt_loss(pooled_features(student), pooled_features(teacher))
        return {"loss": self.feat_weight * value, "pkt": value.detach()}
