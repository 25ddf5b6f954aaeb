"""CRD: Tian et al., contrastive representation distillation with memory banks of negatives.

Over 150 lines: the memory-bank scheme, its DDP sharing and the deviation in drawing negatives are documented here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hfkd.losses._adapters import ContrastMemory, EmbedHead, require_feature_shapes
from hfkd.losses._feature_maps import pooled_features
from hfkd.losses._functional import as_loss_dtype
from hfkd.losses.base import (
    DistillationLoss,
    DistillBatch,
    LossContext,
    LossNeeds,
    PaperRef,
    check_non_negative,
    check_positive,
)
from hfkd.losses.registry import register_loss
from hfkd.utils.errors import UsageError


def contrast_scores(anchor: torch.Tensor, memory_rows: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """Unnormalised exp(m · v / T), (B, K + 1), for (B, D) anchors v and (B, K + 1, D) memory rows m."""
    anchor, memory_rows = as_loss_dtype(anchor, memory_rows.detach())
    # exp(·/0.07) amplifies rounding 14-fold: keep the dot products out of a half-precision autocast.
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        dots = torch.bmm(memory_rows, anchor.unsqueeze(2)).squeeze(2)
    return torch.exp(dots / temperature)


def crd_nce_loss(scores: torch.Tensor, dataset_size: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss on (B, K + 1) normalised scores P (positive first), noise P_n = 1/N:

    −(1/B) Σ_i [log(P_i0 / (P_i0 + K·P_n + eps)) + Σ_j log(K·P_n / (P_ij + K·P_n + eps))].
    """
    (scores,) = as_loss_dtype(scores)
    noise = (scores.shape[1] - 1) / dataset_size
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def crd_loss(
    student_embed: torch.Tensor,
    teacher_embed: torch.Tensor,
    student_memory_rows: torch.Tensor,
    teacher_memory_rows: torch.Tensor,
    *,
    normalizers: tuple[float, float] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset_size: int,
    temperature: float = 0.07,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NCE with the student as anchor against teacher memory rows, plus the converse; Z = `normalizers`, or the
    pair a function of both raw score tensors returns (`CRDLoss` passes its memory's, which fixes Z on the first
    batch). `return_terms=True` also returns the two NCE terms, `crd_student` and `crd_teacher`."""
    student_scores = contrast_scores(student_embed, teacher_memory_rows, temperature=temperature)
    teacher_scores = contrast_scores(teacher_embed, student_memory_rows, temperature=temperature)
    if callable(normalizers):
        normalizers = normalizers(student_scores, teacher_scores).to(student_scores.dtype)
    student_term = crd_nce_loss(student_scores / normalizers[0], dataset_size)
    teacher_term = crd_nce_loss(teacher_scores / normalizers[1], dataset_size)
    loss = student_term + teacher_term
    return (loss, {"crd_student": student_term, "crd_teacher": teacher_term}) if return_terms else loss


@register_loss("crd")
class CRDLoss(DistillationLoss):
    """Contrastive representation distillation: NCE between embeddings of both models, negatives from memory banks.

    Paper: Tian, Krishnan, Isola, *Contrastive Representation Distillation*, ICLR 2020, arXiv:1910.10699

    Objective: v_s, v_t = L2-normalised linear embeddings (`feat_dim`) of the pooled last stage of each model. For
    sample i, the scores are P = exp(v · m / T) / Z against K + 1 rows of the other model's memory bank (row 0 is
    sample i's own, then `nce_k` = K negatives); L = NCE(v_s vs teacher bank) + NCE(v_t vs student bank), the NCE
    being −log(P_0/(P_0 + K/N)) − Σ_j log((K/N)/(P_j + K/N)) averaged over the batch (N = dataset size), times
    `feat_weight`. T = `temperature`; Z (one per direction) is fixed from the first batch as mean score × N. After
    each training step, each bank row of the batch becomes normalise(momentum · row + (1 − momentum) · v).

    Reproduces mdistiller's `CRD.py`: 128-d embeddings, K 16384, T 0.07, momentum 0.5, FEAT_WEIGHT 0.8, CE_WEIGHT 1,
    so `distill_ce_weight=1.0, distill_weight=1.0` give its total. Deviation: mdistiller's dataset draws the
    negatives from other classes ("exact" mode), which needs per-class index lists of the dataset that the loss
    does not have; here the K negatives are drawn uniformly among the other N − 1 samples (with replacement; the
    authors' memory, given no indices, draws from all N, the sample included). Same-class negatives therefore
    occur (about 1 in C). The batch must carry `sample_index` (dataset indices); the
    banks (2 · N · `feat_dim` floats, saved with the adapters) and Z are buffers, and Z and the bank updates are
    shared across processes under DDP. Z, the banks and the negatives make the value depend on the batches seen.

    Args:
        feat_dim (`int`, *optional*, defaults to `128`):
            Embedding size of both heads and of the memory banks.
        nce_k (`int`, *optional*, defaults to `16384`):
            Negatives per sample; must be smaller than the dataset.
        temperature (`float`, *optional*, defaults to `0.07`):
            Temperature T of the scores.
        momentum (`float`, *optional*, defaults to `0.5`):
            Memory-bank momentum, in [0, 1).
        feat_weight (`float`, *optional*, defaults to `0.8`):
            Multiplier of the loss (mdistiller's FEAT_WEIGHT).

    Returns:
        `dict` with `loss` (`feat_weight` times the NCE sum), `crd` (the unweighted sum), and `crd_student` and
        `crd_teacher` (the student-anchored and teacher-anchored NCE terms).
    """

    needs = LossNeeds(hidden_states=True, sample_index=True)
    rank_synchronized_buffers = ("memory.student", "memory.teacher", "memory.normalizer")
    paper = PaperRef(
        title="Contrastive Representation Distillation",
        authors="Yonglong Tian, Dilip Krishnan, Phillip Isola",
        venue="ICLR 2020",
        arxiv_id="1910.10699",
        bibtex=(
            "@inproceedings{tian2020contrastive,\n"
            "  title={Contrastive Representation Distillation},\n"
            "  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},\n"
            "  booktitle={International Conference on Learning Representations},\n"
            "  year={2020}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        feat_dim: int = 128,
        nce_k: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        feat_weight: float = 0.8,
        context: LossContext,
    ) -> None:
        super().__init__()
        for name, value in (("feat_dim", feat_dim), ("nce_k", nce_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"crd: `{name}` must be a positive int, got {value!r}.")
        check_positive("temperature", temperature, "crd")
        if not 0 <= momentum < 1:
            raise UsageError(f"crd: `momentum` must be in [0, 1), got {momentum!r}.")
        check_non_negative("feat_weight", feat_weight, "crd")
        student_shapes, teacher_shapes = require_feature_shapes(context, "crd")
        size = context.dataset_size
        if size is None:
            raise UsageError(
                "crd: the memory banks are sized by the dataset, but `context.dataset_size` is None; the trainer "
                "passes len(train_dataset), so train on a dataset with a length."
            )
        if nce_k >= size:
            raise UsageError(
                f"crd: nce_k={nce_k} must be smaller than the dataset ({size} samples); use nce_k={size - 1} or less."
            )
        self.nce_k, self.temperature, self.feat_weight = nce_k, float(temperature), float(feat_weight)
        self.embed_student = EmbedHead(student_shapes[-1][0], feat_dim)
        self.embed_teacher = EmbedHead(teacher_shapes[-1][0], feat_dim)
        self.memory = ContrastMemory(feat_dim, size, float(momentum))

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.sample_index is None:
            raise UsageError(
                "crd needs each sample's dataset index: give the dataset a `sample_index` column (0..N-1) and have "
                "the collator emit it as a LongTensor."
            )
        student_embed = self.embed_student(pooled_features(student))
        teacher_embed = self.embed_teacher(pooled_features(teacher).detach())
        index = batch.sample_index.to(device=student_embed.device, dtype=torch.long).flatten()
        contrast_index = self.memory.sample(index, self.nce_k)
        value, terms = crd_loss(
            student_embed,
            teacher_embed,
            self.memory.student[contrast_index],
            self.memory.teacher[contrast_index],
            normalizers=self.memory.normalizers,
            dataset_size=self.memory.student.shape[0],
            temperature=self.temperature,
            return_terms=True,
        )
        if self.training:
            self.memory.update(index, student_embed.detach(), teacher_embed.detach())
        return {
            "loss": self.feat_weight * value,
            "crd": value.detach(),
            **{name: term.detach() for name, term in terms.items()},
        }
