"""DETR-family distillation (hfkd.losses._detr) against second implementations written here from the equations:
matching costs with loops, brute-force matching over every assignment, GIoU from its definition, KL and binary KL
with explicit sums, in float64 NumPy that shares no code with hfkd."""

import inspect
import itertools
import math

import numpy as np
import pytest
import torch
from transformers.image_transforms import center_to_corners_format
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import HungarianMatcher, generalized_box_iou

from hfkd.losses._detr import detection_scores, detr_distill_loss, match_queries, teacher_pseudo_targets
from hfkd.utils.errors import UsageError

from .reference import dist as reference_dist

COSTS = {"class_cost": 2.0, "bbox_cost": 5.0, "giou_cost": 2.0}


# --------------------------------------------------------------------------------------------- second implementation


def ref_softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def ref_giou(a, b) -> float:
    """GIoU (Rezatofighi et al., CVPR 2019) of two (cx, cy, w, h) boxes: IoU − |C \\ (A ∪ B)| / |C|, C the smallest
    enclosing box."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def ref_teacher_class(teacher_row, use_sigmoid):
    """(score, class) of a teacher query: best sigmoid, or best softmax probability among the real classes."""
    probs = ref_sigmoid(teacher_row) if use_sigmoid else ref_softmax(teacher_row)[:-1]
    return float(probs.max()), int(probs.argmax())


def ref_cost(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid, class_cost, bbox_cost, giou_cost):
    """(Qs, Qt) matching cost, entry by entry: focal cost (α 0.25, γ 2) or −softmax p, L1, −GIoU."""
    cost = np.zeros((len(s_logits), len(t_logits)))
    for i, j in itertools.product(range(len(s_logits)), range(len(t_logits))):
        _, label = ref_teacher_class(t_logits[j], use_sigmoid)
        if use_sigmoid:
            p = ref_sigmoid(s_logits[i][label])
            c = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8) - 0.75 * p**2 * -np.log(1 - p + 1e-8)
        else:
            c = -ref_softmax(s_logits[i])[label]
        l1 = sum(abs(s_boxes[i][k] - t_boxes[j][k]) for k in range(4))
        cost[i, j] = class_cost * c + bbox_cost * l1 - giou_cost * ref_giou(s_boxes[i], t_boxes[j])
    return cost


def brute_force_matching(cost) -> tuple[float, set[tuple[int, int]]]:
    """The least total cost over every one-to-one assignment of min(rows, cols) pairs, and its (row, col) pairs."""
    rows, cols = cost.shape
    best, best_pairs = math.inf, set()
    if rows >= cols:
        for chosen in itertools.permutations(range(rows), cols):
            total = sum(cost[r, c] for c, r in enumerate(chosen))
            if total < best:
                best, best_pairs = total, {(r, c) for c, r in enumerate(chosen)}
    else:
        for chosen in itertools.permutations(range(cols), rows):
            total = sum(cost[r, c] for r, c in enumerate(chosen))
            if total < best:
                best, best_pairs = total, set(enumerate(chosen))
    return best, best_pairs


def ref_binary_kl(t, s) -> float:
    """KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s))) of one logit pair."""
    p, q = ref_sigmoid(t), ref_sigmoid(s)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def ref_detr_loss(s_logits, s_boxes, t_logits, t_boxes, matches, *, loss, temperature, use_sigmoid, beta, gamma):
    """The four terms, pair by pair and class by class."""
    pairs = [(b, int(i), int(j)) for b, (si, ti) in enumerate(matches) for i, j in zip(si, ti)]
    n = len(pairs)
    s_rows = np.array([s_logits[b, i] for b, i, _ in pairs])
    t_rows = np.array([t_logits[b, j] for b, _, j in pairs])
    if n == 0:
        cls = 0.0
    elif loss == "dist":
        cls = reference_dist(s_rows, t_rows, beta, gamma, temperature, use_sigmoid=use_sigmoid)[0]
    else:
        total = 0.0
        for s, t in zip(s_rows / temperature, t_rows / temperature):
            if use_sigmoid:
                total += sum(ref_binary_kl(t[c], s[c]) for c in range(len(s)))
            else:
                p, q = ref_softmax(t), ref_softmax(s)
                total += sum(p[c] * math.log(p[c] / q[c]) for c in range(len(s)))
        cls = temperature**2 * total / n
    l1 = sum(sum(abs(s_boxes[b, i, k] - t_boxes[b, j, k]) for k in range(4)) for b, i, j in pairs) / max(n, 1)
    giou = sum(1 - ref_giou(s_boxes[b, i], t_boxes[b, j]) for b, i, j in pairs) / max(n, 1)
    matched = {(b, i) for b, i, _ in pairs}
    unmatched = [
        s_logits[b, i] for b in range(len(s_logits)) for i in range(s_logits.shape[1]) if (b, i) not in matched
    ]
    no_object = 0.0
    for row in unmatched:
        if use_sigmoid:
            no_object += sum(-math.log(1 - ref_sigmoid(z)) for z in row)
        else:
            no_object += -math.log(ref_softmax(row)[-1])
    no_object /= max(len(unmatched), 1)
    return {"cls": cls, "box_l1": l1, "box_giou": giou, "no_object": no_object}


# ---------------------------------------------------------------------------------------------------------- inputs


def detections(b: int, q: int, c: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits (B, Q, C) and boxes (B, Q, 4): centres in [0.2, 0.8], sizes in [0.05, 0.45]."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, q, c, generator=g, dtype=torch.float64) * scale
    centres = 0.2 + 0.6 * torch.rand(b, q, 2, generator=g, dtype=torch.float64)
    sizes = 0.05 + 0.4 * torch.rand(b, q, 2, generator=g, dtype=torch.float64)
    return logits, torch.cat([centres, sizes], dim=-1)


def pair(b, qs, qt, c, seed):
    return (*detections(b, qs, c, seed), *detections(b, qt, c, seed + 1000))


def random_matches(b, qs, qt, seed, empty_image=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for image in range(b):
        n = 0 if image == empty_image else int(torch.randint(1, min(qs, qt) + 1, (1,), generator=g))
        out.append((torch.randperm(qs, generator=g)[:n], torch.randperm(qt, generator=g)[:n]))
    return out


def as_numpy(*tensors):
    return tuple(t.detach().double().numpy() for t in tensors)


# -------------------------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("qs,qt,masked", [(5, 3, False), (3, 5, False), (6, 6, True), (4, 4, False)])
def test_matching_minimises_the_cost_over_every_assignment(use_sigmoid, qs, qt, masked):
    s_logits, s_boxes, t_logits, t_boxes = pair(3, qs, qt, c=4, seed=qs * 10 + qt)
    mask = torch.rand(3, qt, generator=torch.Generator().manual_seed(5)) > 0.4 if masked else None
    matches = match_queries(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid, teacher_mask=mask, **COSTS)
    for image, (student_indices, teacher_indices) in enumerate(matches):
        selected = [j for j in range(qt) if mask is None or mask[image, j]]
        arrays = as_numpy(s_logits[image], s_boxes[image], t_logits[image, selected], t_boxes[image, selected])
        cost = ref_cost(*arrays, use_sigmoid, **COSTS)
        best, best_pairs = brute_force_matching(cost)
        assert student_indices.dtype == teacher_indices.dtype == torch.int64
        assert len(student_indices) == len(teacher_indices) == min(qs, len(selected))
        assert student_indices.tolist() == sorted(student_indices.tolist())
        # Teacher indices index the teacher's queries, not the selection.
        got_pairs = {(int(i), selected.index(int(j))) for i, j in zip(student_indices, teacher_indices)}
        assert got_pairs == best_pairs
        assert sum(cost[i, j] for i, j in got_pairs) == pytest.approx(best, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_matching_equals_transformers_matchers_on_the_teacher_detections(use_sigmoid):
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 12, 7, c=6, seed=11)
    matches = match_queries(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid, class_cost=1.0)
    matcher_cls = DeformableDetrHungarianMatcher if use_sigmoid else HungarianMatcher
    matcher = matcher_cls(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0)
    labels = detection_scores(t_logits, use_sigmoid=use_sigmoid)[1]
    targets = [{"class_labels": labels[b], "boxes": t_boxes[b]} for b in range(2)]
    expected = matcher({"logits": s_logits, "pred_boxes": s_boxes}, targets)
    for (got_s, got_t), (want_s, want_t) in zip(matches, expected):
        assert got_s.tolist() == want_s.tolist() and got_t.tolist() == want_t.tolist()


def test_class_cost_zero_matches_identical_boxes_to_themselves():
    logits, boxes = detections(2, 6, 5, seed=3)
    matches = match_queries(logits, boxes, logits[:, [4, 0, 5, 2, 1, 3]], boxes[:, [4, 0, 5, 2, 1, 3]], class_cost=0)
    for student_indices, teacher_indices in matches:
        assert student_indices.tolist() == list(range(6))
        assert teacher_indices.tolist() == [1, 4, 3, 5, 0, 2]


def test_an_empty_teacher_selection_gives_no_match():
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 4, 3, c=3, seed=2)
    mask = torch.tensor([[False, False, False], [False, True, False]])
    (s0, t0), (s1, t1) = match_queries(s_logits, s_boxes, t_logits, t_boxes, teacher_mask=mask)
    assert len(s0) == len(t0) == 0 and len(s1) == 1 and t1.tolist() == [1]


def test_matching_takes_no_gradient_and_leaves_inputs_alone():
    s_logits, s_boxes, t_logits, t_boxes = (t.requires_grad_() for t in pair(2, 5, 4, c=3, seed=4))
    before = [t.detach().clone() for t in (s_logits, s_boxes, t_logits, t_boxes)]
    matches = match_queries(s_logits, s_boxes, t_logits, t_boxes)
    assert all(not i.requires_grad and not j.requires_grad for i, j in matches)
    for tensor, copy in zip((s_logits, s_boxes, t_logits, t_boxes), before):
        assert torch.equal(tensor, copy)


# ---------------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("loss,temperature", [("kd", 1.0), ("kd", 2.0), ("dist", 1.0), ("dist", 3.0)])
def test_terms_match_the_reference_with_an_image_without_matches(use_sigmoid, loss, temperature):
    s_logits, s_boxes, t_logits, t_boxes = pair(4, 7, 6, c=5, seed=21)
    matches = random_matches(4, 7, 6, seed=8, empty_image=2)
    hparams = {"loss": loss, "temperature": temperature, "use_sigmoid": use_sigmoid, "beta": 1.5, "gamma": 0.5}
    got = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, matches=matches, **hparams)
    expected = ref_detr_loss(*as_numpy(s_logits, s_boxes, t_logits, t_boxes), matches, **hparams)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, rel=1e-10, abs=1e-12), name
    weighted = expected["cls"] + 5 * expected["box_l1"] + 2 * expected["box_giou"] + expected["no_object"]
    assert got["loss"].item() == pytest.approx(weighted, rel=1e-10)


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_default_matching_is_match_queries_and_float32_agrees(use_sigmoid):
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 8, 5, c=4, seed=31)
    got = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid)
    matches = match_queries(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid)
    expected = ref_detr_loss(
        *as_numpy(s_logits, s_boxes, t_logits, t_boxes),
        matches,
        loss="kd",
        temperature=1.0,
        use_sigmoid=use_sigmoid,
        beta=1.0,
        gamma=1.0,
    )
    single = detr_distill_loss(*(t.float() for t in (s_logits, s_boxes, t_logits, t_boxes)), use_sigmoid=use_sigmoid)
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, rel=1e-10, abs=1e-12), name
        assert single[name].dtype == torch.float32
        assert single[name].item() == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_score_threshold_matches_only_confident_teacher_queries(use_sigmoid):
    s_logits, s_boxes, t_logits, t_boxes = pair(3, 8, 8, c=4, seed=41)
    scores = detection_scores(t_logits, use_sigmoid=use_sigmoid)[0]
    threshold = float(scores.median())
    got = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid, score_threshold=threshold)
    matches = match_queries(
        s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid, teacher_mask=scores > threshold
    )
    assert sum(len(i) for i, _ in matches) == int((scores > threshold).sum()) < 24
    expected = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, use_sigmoid=use_sigmoid, matches=matches)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("loss", ["kd", "dist"])
def test_no_match_anywhere_gives_zero_matched_terms_and_finite_gradients(use_sigmoid, loss):
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 5, 4, c=3, seed=51)
    s_logits.requires_grad_(), s_boxes.requires_grad_()
    out = detr_distill_loss(
        s_logits, s_boxes, t_logits, t_boxes, loss=loss, use_sigmoid=use_sigmoid, score_threshold=1.0
    )
    assert out["cls"].item() == out["box_l1"].item() == out["box_giou"].item() == 0.0
    expected = ref_detr_loss(
        *as_numpy(s_logits, s_boxes, t_logits, t_boxes),
        [(torch.zeros(0), torch.zeros(0))] * 2,
        loss=loss,
        temperature=1.0,
        use_sigmoid=use_sigmoid,
        beta=1.0,
        gamma=1.0,
    )
    assert out["no_object"].item() == pytest.approx(expected["no_object"], rel=1e-10)
    out["loss"].backward()
    assert torch.isfinite(s_logits.grad).all() and s_logits.grad.abs().sum() > 0
    assert s_boxes.grad is None or torch.equal(s_boxes.grad, torch.zeros_like(s_boxes))


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_identical_student_and_teacher_give_zero_class_and_box_terms(use_sigmoid):
    # Confident teacher queries on well-separated boxes: the default matching pairs each query with itself.
    logits, boxes = detections(2, 6, 5, seed=61, scale=6.0)
    matches = match_queries(logits, boxes, logits.clone(), boxes.clone(), use_sigmoid=use_sigmoid)
    assert all(i.tolist() == j.tolist() == list(range(6)) for i, j in matches)
    out = detr_distill_loss(logits, boxes, logits.clone(), boxes.clone(), use_sigmoid=use_sigmoid)
    for name in ("cls", "box_l1", "box_giou", "no_object"):
        assert abs(out[name].item()) < 1e-12, name
    # DIST's relation terms are 1 − Pearson, 0 up to the 1e-8 in its denominator.
    dist = detr_distill_loss(logits, boxes, logits.clone(), boxes.clone(), loss="dist", use_sigmoid=use_sigmoid)
    assert 0 <= dist["cls"].item() < 1e-6


@pytest.mark.parametrize("use_sigmoid", [True, False])
@pytest.mark.parametrize("loss", ["kd", "dist"])
def test_gradients_reach_the_student_only(use_sigmoid, loss):
    s_logits, s_boxes, t_logits, t_boxes = (t.requires_grad_() for t in pair(2, 6, 4, c=3, seed=71))
    out = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, loss=loss, use_sigmoid=use_sigmoid)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert s_logits.grad.abs().sum() > 0 and s_boxes.grad.abs().sum() > 0
    assert t_logits.grad is None and t_boxes.grad is None


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_gradient_matches_finite_differences(use_sigmoid):
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 4, 3, c=3, seed=81)
    matches = random_matches(2, 4, 3, seed=9)

    def total(logits, boxes):
        kwargs = {"matches": matches, "temperature": 2.0, "use_sigmoid": use_sigmoid}
        return detr_distill_loss(logits, boxes, t_logits, t_boxes, **kwargs)["loss"]

    assert torch.autograd.gradcheck(total, (s_logits.requires_grad_(), s_boxes.requires_grad_()))


PINNED_LOSS = 11.231526256941013
"""detr_distill_loss with its defaults on the inputs below (float64, seed 91), when it was written."""


def test_hyperparameters_change_the_value_and_a_pinned_number():
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 6, 5, c=4, seed=91)
    matches = random_matches(2, 6, 5, seed=3)
    base = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, matches=matches)
    # Change the pinned number only with a stated reason.
    assert base["loss"].item() == pytest.approx(PINNED_LOSS, rel=1e-10)
    for change in (
        {"temperature": 2.0},
        {"box_weight": 1.0},
        {"giou_weight": 1.0},
        {"no_object_weight": 0.0},
        {"use_sigmoid": False},
        {"loss": "dist"},
    ):
        other = detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, matches=matches, **change)
        assert not math.isclose(other["loss"].item(), base["loss"].item()), change
    betas = [
        detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, matches=matches, loss="dist", beta=b)["cls"].item()
        for b in (1.0, 2.0)
    ]
    assert not math.isclose(*betas)


# ------------------------------------------------------------------------------------------------- pseudo targets


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_pseudo_targets_keep_the_teacher_detections_above_the_threshold(use_sigmoid):
    t_logits, t_boxes = detections(3, 10, 4, seed=101, scale=3.0)
    targets = teacher_pseudo_targets(t_logits, t_boxes, threshold=0.6, use_sigmoid=use_sigmoid)
    logits, boxes = as_numpy(t_logits, t_boxes)
    assert len(targets) == 3
    for image, target in enumerate(targets):
        assert set(target) == {"class_labels", "boxes"}
        kept = [(q, ref_teacher_class(logits[image, q], use_sigmoid)[1]) for q in range(10)]
        kept = [(q, label) for q, label in kept if ref_teacher_class(logits[image, q], use_sigmoid)[0] > 0.6]
        assert target["class_labels"].dtype == torch.int64
        assert target["class_labels"].tolist() == [label for _, label in kept]
        np.testing.assert_array_equal(target["boxes"].numpy(), boxes[image, [q for q, _ in kept]].reshape(-1, 4))
    if not use_sigmoid:
        # The no-object class (last) is never a pseudo label.
        assert all((t["class_labels"] < 3).all() for t in targets)
    assert sum(len(t["class_labels"]) for t in targets) > 0
    assert all(len(t["boxes"]) == 0 for t in teacher_pseudo_targets(t_logits, t_boxes, threshold=1.0))


# ---------------------------------------------------------------------------------------------------------- errors


def test_bad_arguments_raise_usage_errors():
    s_logits, s_boxes, t_logits, t_boxes = pair(2, 4, 3, c=3, seed=1)
    with pytest.raises(UsageError, match="'kd' or 'dist'"):
        detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, loss="mse")
    with pytest.raises(UsageError, match="same batch and classes"):
        detr_distill_loss(s_logits, s_boxes, t_logits[..., :2], t_boxes)
    with pytest.raises(UsageError, match=r"\(B, Q, 4\)"):
        match_queries(s_logits, s_boxes[..., :2], t_logits, t_boxes)
    with pytest.raises(UsageError, match="not both"):
        detr_distill_loss(
            s_logits, s_boxes, t_logits, t_boxes, matches=random_matches(2, 4, 3, 0), score_threshold=0.5
        )
    with pytest.raises(UsageError, match="temperature"):
        detr_distill_loss(s_logits, s_boxes, t_logits, t_boxes, temperature=0.0)
    with pytest.raises(UsageError, match="teacher_mask"):
        match_queries(s_logits, s_boxes, t_logits, t_boxes, teacher_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(UsageError, match="all be 0"):
        match_queries(s_logits, s_boxes, t_logits, t_boxes, class_cost=0, bbox_cost=0, giou_cost=0)


def test_the_transformers_box_helpers_keep_their_signatures():
    """hfkd.losses._detr calls these two functions, which transformers' top level does not export."""
    assert str(inspect.signature(generalized_box_iou)) == "(boxes1, boxes2)"
    assert list(inspect.signature(center_to_corners_format).parameters) == ["bboxes_center"]
