"""Distillation between DETR-family detectors (DETR, Deformable DETR, RT-DETR): query matching and the matched losses.

A DETR-family detector predicts a set of queries, each with class logits (B, Q, C) and a box (B, Q, 4) in normalised
(cx, cy, w, h). Student and teacher queries are not aligned, so the teacher's queries are first matched one-to-one
to the student's, with the Hungarian matching and matching cost these models train with (`match_queries`); the
losses then compare each matched pair (`detr_distill_loss`). `teacher_pseudo_targets` turns the teacher's confident
detections into the `{"class_labels", "boxes"}` targets the models' own losses take, for images without labels.

Two class heads exist, chosen by `use_sigmoid`:

- softmax (DETR): C = the dataset's classes + one last "no-object" class; a query's score and class are the max and
  argmax of its softmax over the real classes (the last one left out), as DETR's post-processing takes them;
- sigmoid (Deformable DETR, RT-DETR, trained with sigmoid focal loss): C = the dataset's classes, no no-object
  class; a query's score and class are the max and argmax of its per-class sigmoids.

The box costs and losses use transformers' `generalized_box_iou` (from `transformers.loss.loss_for_object_detection`,
which transformers' top level does not export; this module is the only place hfkd imports it) and
`center_to_corners_format` (`transformers.image_transforms`). Like transformers' losses, `generalized_box_iou` raises
a `ValueError` on a box with a negative width or height.

The terms of `detr_distill_loss`, over the N matched (student, teacher) query pairs of a micro-batch:

- `cls`: with `loss="kd"`, T² · mean over pairs of KL(softmax(t/T) ‖ softmax(s/T)) over all C classes, the
  no-object class included; with `use_sigmoid`, T² · mean over pairs of Σ_c KL(Bern(σ(t_c/T)) ‖ Bern(σ(s_c/T))).
  With `loss="dist"`, `dist_loss` on the N matched rows (β = `beta`, γ = `gamma`, τ = `temperature`, σ instead
  of the softmax with `use_sigmoid`); its intra-class term correlates the classes over the matched queries of
  the whole micro-batch, so it depends on the batch;
- `box_l1`: mean over pairs of Σ |b_s − b_t| over (cx, cy, w, h); `box_giou`: mean over pairs of 1 − GIoU;
- `no_object`: over the student queries left unmatched, mean of −log softmax(s)[no-object] (the last class), or
  with `use_sigmoid` of Σ_c −log(1 − σ(s_c)), every class pushed toward 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_for_object_detection import generalized_box_iou

from hfkd.losses._functional import as_loss_dtype
from hfkd.losses.dist import dist_loss
from hfkd.utils.errors import UsageError

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
"""The sigmoid focal matching cost's α and γ: Deformable DETR's matcher hard-codes them, and they are RT-DETR's
`matcher_alpha` / `matcher_gamma` defaults."""

DETR_DISTILL_TERMS = ("cls", "box_l1", "box_giou", "no_object")
"""The terms `detr_distill_loss` returns besides `loss`."""

Matches = list[tuple[torch.Tensor, torch.Tensor]]


def _linear_sum_assignment():
    """scipy's Hungarian solver, which only detection needs: `pip install "hfkd[detection]"` installs it."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:
        raise ImportError('Matching detectors\' queries needs scipy: pip install "hfkd[detection]".') from error
    return linear_sum_assignment


def _check_detections(logits: torch.Tensor, boxes: torch.Tensor, role: str) -> None:
    if logits.ndim != 3 or boxes.ndim != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise UsageError(
            f"detr: the {role}'s logits must be (B, Q, C) and its boxes (B, Q, 4) for the same B and Q, got logits "
            f"{tuple(logits.shape)} and boxes {tuple(boxes.shape)}."
        )


def _check_pair(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
) -> None:
    _check_detections(student_logits, student_boxes, "student")
    _check_detections(teacher_logits, teacher_boxes, "teacher")
    if student_logits.shape[0] != teacher_logits.shape[0] or student_logits.shape[2] != teacher_logits.shape[2]:
        raise UsageError(
            f"detr: student and teacher must score the same batch and classes, got student logits "
            f"{tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} ((B, Q, C) each); a "
            "teacher with another label space needs its classes mapped first."
        )


@torch.no_grad()
def detection_scores(logits: torch.Tensor, *, use_sigmoid: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's score and class, (B, Q) each: max and argmax of the sigmoids (`use_sigmoid`), or of the softmax
    over the real classes, the last (no-object) class left out (DETR's post-processing)."""
    (logits,) = as_loss_dtype(logits.detach())
    probs = logits.sigmoid() if use_sigmoid else logits.softmax(-1)[..., :-1]
    scores, labels = probs.max(-1)
    return scores, labels


@torch.no_grad()
def _class_cost(student_logits: torch.Tensor, labels: torch.Tensor, use_sigmoid: bool) -> torch.Tensor:
    """(Qs, N) cost of giving each student query each target class: the sigmoid focal cost of RT-DETR's and
    Deformable DETR's matchers, or DETR's −p (the student's softmax probability of the class)."""
    if not use_sigmoid:
        return -student_logits.softmax(-1)[:, labels]
    prob = student_logits.sigmoid()[:, labels]
    neg_cost = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * -(1 - prob + 1e-8).log()
    pos_cost = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * -(prob + 1e-8).log()
    return pos_cost - neg_cost


@torch.no_grad()
def match_queries(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    *,
    class_cost: float = 2.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
    use_sigmoid: bool = True,
    teacher_mask: torch.Tensor | None = None,
) -> Matches:
    """Hungarian matching of the teacher's queries (those `teacher_mask` (B, Qt) marks, all without it) to the
    student's, per image, treating each teacher query as a target box of its predicted class (`detection_scores`).

    The cost of student query i for teacher query j is transformers' matcher cost (`HungarianMatcher` of
    `loss_for_object_detection.py`, `RTDetrHungarianMatcher` of `loss_rt_detr.py`, `DeformableDetrHungarianMatcher`
    of `loss_deformable_detr.py`): class_cost · c_ij + bbox_cost · ‖b_i − b_j‖₁ − giou_cost · GIoU(b_i, b_j), boxes
    in normalised (cx, cy, w, h) and GIoU on their corners, where c_ij is the sigmoid focal cost
    α(1 − p)^γ(−log(p + 1e-8)) − (1 − α)p^γ(−log(1 − p + 1e-8)) of the student's sigmoid p of the teacher's class
    (α = 0.25, γ = 2) with `use_sigmoid`, and −p for the student's softmax probability p of that class otherwise.
    NaN and ±inf costs become the dtype's max, as there. Defaults are RT-DETR's and Deformable DETR's costs (DETR's
    are 1, 5, 2). No gradient flows through the matching.

    Returns, per image, `(student_indices, teacher_indices)`: int64 CPU tensors of min(Qs, selected teacher
    queries) matched pairs, student indices ascending; teacher indices index the teacher's queries (not the
    selection).
    """
    _check_pair(student_logits, student_boxes, teacher_logits, teacher_boxes)
    if class_cost == bbox_cost == giou_cost == 0:
        raise UsageError("detr: class_cost, bbox_cost and giou_cost cannot all be 0; give at least one a weight.")
    if teacher_mask is not None and tuple(teacher_mask.shape) != tuple(teacher_logits.shape[:2]):
        raise UsageError(
            f"detr: teacher_mask must be (B, Qt) = {tuple(teacher_logits.shape[:2])}, one value per teacher query, "
            f"got {tuple(teacher_mask.shape)}."
        )
    student_logits, student_boxes, teacher_boxes = as_loss_dtype(
        student_logits.detach(), student_boxes.detach(), teacher_boxes.detach()
    )
    _, teacher_labels = detection_scores(teacher_logits, use_sigmoid=use_sigmoid)
    matches = []
    for image in range(student_logits.shape[0]):
        selected = torch.arange(teacher_logits.shape[1], device=teacher_logits.device)
        if teacher_mask is not None:
            selected = selected[teacher_mask[image].to(device=selected.device, dtype=torch.bool)]
        labels, targets = teacher_labels[image, selected], teacher_boxes[image, selected]
        cost = class_cost * _class_cost(student_logits[image], labels, use_sigmoid)
        cost = cost + bbox_cost * torch.cdist(student_boxes[image], targets, p=1)
        giou = generalized_box_iou(center_to_corners_format(student_boxes[image]), center_to_corners_format(targets))
        cost = cost - giou_cost * giou
        max_value = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=max_value, posinf=max_value, neginf=max_value)
        student_indices, target_indices = _linear_sum_assignment()(cost.cpu().numpy())
        student_indices = torch.as_tensor(student_indices, dtype=torch.int64)
        teacher_indices = selected.cpu()[torch.as_tensor(target_indices, dtype=torch.int64)]
        matches.append((student_indices, teacher_indices))
    return matches


def _binary_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s))) per entry, from log-sigmoids (stable for large logits)."""
    teacher_log_on, teacher_log_off = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    student_log_on, student_log_off = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    on = teacher_log_on.exp() * (teacher_log_on - student_log_on)
    return on + teacher_log_off.exp() * (teacher_log_off - student_log_off)


def _matched_class_loss(
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    *,
    loss: str,
    temperature: float,
    use_sigmoid: bool,
    beta: float,
    gamma: float,
) -> torch.Tensor:
    """The class term on the (N, C) matched rows: KD (softmax KL, or binary KL summed over the classes, × T², mean
    over the rows) or DIST (`dist_loss` on the rows). 0 with no row."""
    if loss == "dist":
        return dist_loss(
            student_rows, teacher_rows, beta=beta, gamma=gamma, temperature=temperature, use_sigmoid=use_sigmoid
        )
    if len(student_rows) == 0:
        return student_rows.sum()
    if use_sigmoid:
        per_row = _binary_kl(teacher_rows / temperature, student_rows / temperature).sum(-1)
    else:
        student_log_probs = F.log_softmax(student_rows / temperature, dim=-1)
        teacher_log_probs = F.log_softmax(teacher_rows / temperature, dim=-1)
        per_row = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(-1)
    # T² keeps the soft-target gradient scale independent of T (Hinton et al.).
    return per_row.mean() * temperature**2


def _no_object_loss(unmatched_logits: torch.Tensor, use_sigmoid: bool) -> torch.Tensor:
    """Mean over the (N, C) unmatched student queries of CE toward the last (no-object) class, or with sigmoids of
    Σ_c BCE(σ(s_c), 0) = Σ_c softplus(s_c). 0 with no unmatched query."""
    if len(unmatched_logits) == 0:
        return unmatched_logits.sum()
    if use_sigmoid:
        return F.softplus(unmatched_logits).sum(-1).mean()
    return -F.log_softmax(unmatched_logits, dim=-1)[:, -1].mean()


def _box_losses(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 summed over (cx, cy, w, h) and 1 − GIoU, each averaged over the (N, 4) matched pairs; 0 with none."""
    if len(student_boxes) == 0:
        zero = student_boxes.sum()
        return zero, zero
    l1 = (student_boxes - teacher_boxes).abs().sum(-1).mean()
    giou = generalized_box_iou(center_to_corners_format(student_boxes), center_to_corners_format(teacher_boxes))
    return l1, (1 - giou.diagonal()).mean()


def _check_loss_arguments(loss: str, temperature: float, weights: dict[str, float]) -> None:
    if loss not in ("kd", "dist"):
        raise UsageError(f"detr: `loss` must be 'kd' or 'dist', got {loss!r}.")
    if not temperature > 0:
        raise UsageError(f"detr: `temperature` must be > 0, got {temperature!r}. Pass a positive value.")
    for name, value in weights.items():
        if not value >= 0:
            raise UsageError(f"detr: `{name}` must be >= 0, got {value!r}. Pass zero or a positive value.")


def detr_distill_loss(
    student_logits: torch.Tensor,
    student_boxes: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_boxes: torch.Tensor,
    *,
    loss: str = "kd",
    temperature: float = 1.0,
    use_sigmoid: bool = True,
    matches: Matches | None = None,
    box_weight: float = 5.0,
    giou_weight: float = 2.0,
    no_object_weight: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    score_threshold: float | None = None,
) -> dict[str, torch.Tensor]:
    """Distill a DETR-family student from a DETR-family teacher on matched queries.

    `matches` are per-image `(student_indices, teacher_indices)` pairs (`match_queries`); without them the queries
    are matched here by `match_queries` with its default costs, over the teacher queries whose score
    (`detection_scores`) exceeds `score_threshold` (all of them when it is None). Over the N matched pairs of the
    micro-batch (DETR normalises its box losses by the number of boxes, not of images) it returns the terms the
    module docstring defines.

    A term with no pair (or no unmatched query) is 0, so images without matches add nothing and no NaN arises.
    `loss` = cls + box_weight · box_l1 + giou_weight · box_giou + no_object_weight · no_object; the four terms are
    returned unweighted beside it. Gradients reach the student's logits and boxes only; the teacher is a target.
    """
    _check_pair(student_logits, student_boxes, teacher_logits, teacher_boxes)
    weights = {"box_weight": box_weight, "giou_weight": giou_weight, "no_object_weight": no_object_weight}
    _check_loss_arguments(loss, temperature, {**weights, "beta": beta, "gamma": gamma})
    if matches is None:
        teacher_mask = None
        if score_threshold is not None:
            teacher_mask = detection_scores(teacher_logits, use_sigmoid=use_sigmoid)[0] > score_threshold
        detections = (student_logits, student_boxes, teacher_logits, teacher_boxes)
        matches = match_queries(*detections, use_sigmoid=use_sigmoid, teacher_mask=teacher_mask)
    elif score_threshold is not None:
        raise UsageError("detr: pass `score_threshold` or `matches`, not both (the threshold selects the matches).")
    if len(matches) != student_logits.shape[0]:
        raise UsageError(f"detr: `matches` holds {len(matches)} images, the logits {student_logits.shape[0]}.")
    student_logits, student_boxes, teacher_logits, teacher_boxes = as_loss_dtype(
        student_logits, student_boxes, teacher_logits.detach(), teacher_boxes.detach()
    )
    device = student_logits.device
    images = torch.cat([torch.full((len(s),), b, dtype=torch.int64) for b, (s, _) in enumerate(matches)]).to(device)
    student_indices = torch.cat([torch.as_tensor(s, dtype=torch.int64) for s, _ in matches]).to(device)
    teacher_indices = torch.cat([torch.as_tensor(t, dtype=torch.int64) for _, t in matches]).to(device)
    unmatched = torch.ones(student_logits.shape[:2], dtype=torch.bool, device=device)
    unmatched[images, student_indices] = False
    hparams = {"loss": loss, "temperature": temperature, "use_sigmoid": use_sigmoid, "beta": beta, "gamma": gamma}
    cls = _matched_class_loss(
        student_logits[images, student_indices], teacher_logits[images, teacher_indices], **hparams
    )
    box_l1, box_giou = _box_losses(student_boxes[images, student_indices], teacher_boxes[images, teacher_indices])
    no_object = _no_object_loss(student_logits[unmatched], use_sigmoid)
    total = cls + box_weight * box_l1 + giou_weight * box_giou + no_object_weight * no_object
    return {"loss": total, "cls": cls, "box_l1": box_l1, "box_giou": box_giou, "no_object": no_object}


@torch.no_grad()
def teacher_pseudo_targets(
    teacher_logits: torch.Tensor, teacher_boxes: torch.Tensor, *, threshold: float = 0.5, use_sigmoid: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Per image, the teacher's detections whose score (`detection_scores`) exceeds `threshold`, as the targets
    transformers' detection losses take: `{"class_labels": (N,) int64, "boxes": (N, 4) normalised (cx, cy, w, h)}`,
    in query order, detached. For images without labels."""
    _check_detections(teacher_logits, teacher_boxes, "teacher")
    scores, labels = detection_scores(teacher_logits, use_sigmoid=use_sigmoid)
    keep = scores > threshold
    return [
        {"class_labels": labels[image][keep[image]], "boxes": teacher_boxes[image][keep[image]].detach()}
        for image in range(teacher_logits.shape[0])
    ]
