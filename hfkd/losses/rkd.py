"""RKD: Park et al., relational distillation of distances and angles between samples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hfkd.losses._feature_functional import feature_pairs, pairwise_distances, without_autocast
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


def _normalised_distances(embeds: torch.Tensor) -> torch.Tensor:
    distances = pairwise_distances(embeds, eps=1e-12)
    positive = distances[distances > 0]
    # A batch of one sample has no pair to relate: its distance term is 0 instead of mdistiller's NaN.
    return distances / positive.mean() if positive.numel() else distances


def _angles(embeds: torch.Tensor) -> torch.Tensor:
    # angles[i, j, k] = cos of the angle at x_i between x_j − x_i and x_k − x_i (0 where a difference is 0).
    differences = F.normalize(embeds.unsqueeze(0) - embeds.unsqueeze(1), p=2, dim=2)
    return differences @ differences.mT


@without_autocast
def rkd_loss(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """distance_weight · smooth-L1(ψ_D) + angle_weight · smooth-L1(ψ_A), both averaged over their entries, on (B, D)
    embeddings (D may differ between the two models); `return_terms=True` also returns the unweighted `distance`
    and `angle`."""
    ((student, teacher),) = feature_pairs([student_embeds.flatten(1)], [teacher_embeds.flatten(1)], "rkd", maps=False)
    distance = F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))
    angle = F.smooth_l1_loss(_angles(student), _angles(teacher))
    loss = distance_weight * distance + angle_weight * angle
    return (loss, {"distance": distance, "angle": angle}) if return_terms else loss


@register_loss("rkd")
class RKDLoss(DistillationLoss):
    """Relational knowledge distillation: match the distances and angles between the samples' embeddings.

    Paper: Park, Kim, Lu, Cho, *Relational Knowledge Distillation*, CVPR 2019, arXiv:1904.05068

    Objective: on the globally pooled last feature maps (mdistiller's `pooled_feat`), ψ_D(x_i, x_j) =
    ‖x_i − x_j‖₂ / μ with μ the mean of the positive pairwise distances (squared norms clamped at 1e-12 before the
    square root), and ψ_A(x_i, x_j, x_k) = cos∠(x_j − x_i, x_k − x_i) for every ordered triplet (0 when a
    difference vanishes); L = `distance_weight`·mean smooth-L1(ψ_D^s − ψ_D^t) + `angle_weight`·mean
    smooth-L1(ψ_A^s − ψ_A^t) (Huber with δ = 1, averaged over the B² and B³ entries), times `feat_weight`. The
    teacher side takes no gradient. The embedding sizes may differ. Distances and angles relate the samples of
    the micro-batch, so the loss depends on the batch composition by design: the per-device batch size changes
    it. The angle term costs O(B³·D).

    Reproduces mdistiller's `RKD.py` (DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50, ε 1e-12, unsquared distances) with
    `feat_weight=1` (its FEAT_WEIGHT): with `distill_ce_weight=1.0` (its CE_WEIGHT) and `distill_weight=1.0`
    the trainer's total equals mdistiller's.

    Args:
        distance_weight (`float`, *optional*, defaults to `25.0`):
            Weight of the distance term (the paper's λ_D).
        angle_weight (`float`, *optional*, defaults to `50.0`):
            Weight of the angle term (the paper's λ_A).
        feat_weight (`float`, *optional*, defaults to `1.0`):
            Multiplier of the whole loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the RKD loss), `rkd` (the weighted sum of the two terms, before
        `feat_weight`), `distance` and `angle` (the unweighted terms).
    """

    needs = LossNeeds(hidden_states=True)
    # Feature maps of segmentation backbones too (SegFormer, UperNet's backbone, the smp encoders).
    tasks = frozenset({IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION})
    paper = PaperRef(
        title="Relational Knowledge Distillation",
        authors="Wonpyo Park, Dongju Kim, Yan Lu, Minsu Cho",
        venue="CVPR 2019",
        arxiv_id="1904.05068",
        bibtex=(
            "@inproceedings{park2019relational,\n"
            "  title={Relational Knowledge Distillation},\n"
            "  author={Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},\n"
            "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},\n"
            "  year={2019}\n"
            "}"
        ),
    )

    def __init__(self, *, distance_weight: float = 25.0, angle_weight: float = 50.0, feat_weight: float = 1.0) -> None:
        super().__init__()
        check_non_negative("distance_weight", distance_weight, "rkd")
        check_non_negative("angle_weight", angle_weight, "rkd")
        check_non_negative("feat_weight", feat_weight, "rkd")
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.feat_weight = float(feat_weight)

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        value, terms = rkd_loss(
            pooled_features(student),
            pooled_features(teacher),
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
            return_terms=True,
        )
        return {
            "loss": self.feat_weight * value,
            "rkd": value.detach(),
            **{name: term.detach() for name, term in terms.items()},
        }
