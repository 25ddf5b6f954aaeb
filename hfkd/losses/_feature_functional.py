"""Pure helpers shared by the feature losses (AT, NST, SP, PKT, RKD, KDSVD)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from hfkd.losses._functional import as_loss_dtype
from hfkd.utils.errors import UsageError

LossFunction = TypeVar("LossFunction", bound=Callable[..., Any])


def without_autocast(function: LossFunction) -> LossFunction:
    """Run a feature loss with autocast off for its inputs' device, so that its products stay in float32.

    The trainer computes losses inside the student's mixed-precision context. There the Gram matrices, kernels
    and distances of these losses would run in half precision, where their differences (the whole signal of
    SP, PKT or RKD) drown in rounding; inputs are cast to float32 (float64 stays) instead.
    """

    @functools.wraps(function)
    def wrapper(student: Any, teacher: Any, *args: Any, **kwargs: Any) -> Any:
        first = student if isinstance(student, torch.Tensor) else next(iter(student), None)
        device_type = first.device.type if isinstance(first, torch.Tensor) else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return function(student, teacher, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_stages(stages: Any, loss_key: str) -> None:
    """Reject a `stages` kwarg that is neither a slice string such as `"1:"` nor a non-empty list of ints."""
    if isinstance(stages, str):
        parts = stages.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            [int(p) for p in parts if p.strip()]
        except ValueError:
            raise UsageError(
                f"{loss_key}: `stages` {stages!r} is not a slice; use a string such as '1:' or '-2:', or a list "
                "of stage indices such as [1, 2, 3] (0 is the stem)."
            ) from None
        return
    if (
        not isinstance(stages, Sequence)
        or not stages
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in stages)
    ):
        raise UsageError(
            f"{loss_key}: `stages` must be a slice string such as '1:' or a non-empty list of stage indices such as "
            f"[1, 2, 3] (0 is the stem), got {stages!r}."
        )


def feature_pairs(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    loss_key: str,
    *,
    maps: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair the stages, detach the teacher and cast to the loss dtype; with `maps`, require (B, C, H, W) tensors."""
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise UsageError(
            f"{loss_key}: got {len(student_feats)} student and {len(teacher_feats)} teacher feature maps; they must "
            "be the same non-zero number. Choose `stages` so that both models report the same number of maps."
        )
    pairs = []
    for student, teacher in zip(student_feats, teacher_feats):
        if maps and (student.ndim != 4 or teacher.ndim != 4):
            raise UsageError(
                f"{loss_key}: expected (B, C, H, W) feature maps, got student {tuple(student.shape)} and teacher "
                f"{tuple(teacher.shape)}."
            )
        # The teacher is a target: no gradient flows into it even if its features require grad.
        pairs.append(as_loss_dtype(student, teacher.detach()))
    return pairs


def pool_to_common_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger map of a (B, C, H, W) pair down to the smaller height and width.

    mdistiller pools the larger map to the smaller one (comparing heights of square maps); here each dimension is
    pooled to the minimum of the two, which is the same for square maps. A student larger than the teacher is
    therefore pooled to the teacher's size; a smaller student is never upsampled.
    """
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def pairwise_distances(embeds: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, B) Euclidean distances, ‖a‖² + ‖b‖² − 2a·b clamped at `eps` before the square root, zero diagonal.

    The clamp and the Gram-matrix expansion follow RKD's `_pdist`, so coincident off-diagonal points are √eps apart.
    """
    squared_norms = embeds.pow(2).sum(dim=1)
    squared = (squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * embeds @ embeds.t()).clamp(min=eps)
    eye = torch.eye(len(embeds), dtype=torch.bool, device=embeds.device)
    return squared.sqrt().masked_fill(eye, 0.0)


def top_right_singular_vectors(matrices: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` leading right singular vectors (B, W, count) and singular values (B, count) of (B, M, W) matrices.

    The values come from `torch.linalg.svd`. The gradient is first-order perturbation theory for the eigenvectors
    of XᵀX: dv_i = Σ_{j≠i} v_j (v_jᵀ dA v_i) / (λ_i − λ_j) + (I − VVᵀ) dA v_i / λ_i, with λ = s² and A = XᵀX. This is
    the SVD's own derivative, but it only involves pairs that contain a returned vector, so repeated singular
    values among the discarded ones (zero columns of post-ReLU maps) do not turn the gradient into NaN the way
    `torch.linalg.svd`'s backward does. Exactly tied pairs (λ_i = λ_j) get no gradient. The singular values
    carry no gradient.
    """
    with torch.no_grad():
        _, values, vh = torch.linalg.svd(matrices, full_matrices=False)
    basis = vh.mT
    count = min(count, basis.shape[-1])
    vectors, top_values = basis[..., :count], values[..., :count]
    if not matrices.requires_grad:
        return vectors, top_values
    gram = matrices.mT @ matrices
    # Zero in value, dA in the backward pass: the perturbation terms below add nothing to the forward result.
    delta = gram - gram.detach()
    eigenvalues = values.pow(2)
    gaps = eigenvalues[..., None, :count] - eigenvalues[..., :, None]
    nonzero = gaps != 0
    coefficients = torch.where(nonzero, (basis.mT @ delta @ vectors) / torch.where(nonzero, gaps, 1.0), 0.0)
    corrected = vectors + basis @ coefficients
    if basis.shape[-1] < basis.shape[-2]:
        # Fewer rows than columns: V misses the null space of X, whose eigenvalue is 0.
        moved = delta @ vectors
        outside = moved - basis @ (basis.mT @ moved)
        top_eigenvalues = eigenvalues[..., None, :count]
        corrected = corrected + torch.where(top_eigenvalues > 0, outside / top_eigenvalues.clamp(min=1e-30), 0.0)
    return corrected, top_values


def neck_level_pairs(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], loss_key: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`feature_pairs` for a detector's neck levels (mimic, PKD): the same number of levels on both sides."""
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise UsageError(
            f"{loss_key}: got {len(student_feats)} student and {len(teacher_feats)} teacher neck levels; they must be "
            "the same non-zero number. Give both detectors necks with the same levels (or pass the matching ones)."
        )
    return feature_pairs(student_feats, teacher_feats, loss_key)
