"""Mixup and CutMix of a training batch, computed as timm's `Mixup` does in its default "batch" mode.

Each batch is mixed with its reverse (sample i with sample B-1-i) by one draw: with both alphas set, CutMix with
probability `switch_prob`, else Mixup; λ ~ Beta(α, α); a CutMix box of area (1 - λ) around a uniform centre, λ then
corrected to the pasted share. The targets become soft: λ·y_i + (1 - λ)·y_(B-1-i), label smoothing folded in
(`off = smoothing / C`, `on = 1 - smoothing + off`), as timm's `mixup_target`. The student and the teacher see the
same mixed images (a teacher's own pixels get the same λ and the box scaled to their size).

Unlike timm (NumPy's global generator), every draw comes from a generator seeded by (seed, step, micro-batch,
process), so a resumed run mixes its batches as the uninterrupted run did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hfkd.data.batch import LABELS, is_image_key
from hfkd.losses import get_loss_class
from hfkd.utils.errors import UsageError


def check_mixing_arguments(args: Any) -> None:
    """Refuse, when the arguments are read, what Mixup/CutMix cannot serve: a negative alpha, a teacher cache (its
    outputs are of unmixed views), and losses that read the labels, a second view or sample indices."""
    for name in ("distill_mixup", "distill_cutmix"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise UsageError(f"`{name}` is a Beta alpha >= 0 (0: off; Swin's: mixup 0.8, cutmix 1.0), got {value!r}.")
    if not args.mixes_batches or not args.uses_teacher:
        return
    if args.teacher_cache_dir is not None:
        raise UsageError(
            "Mixup/CutMix mix the images the teacher sees, and a teacher cache (`teacher_cache_dir`) holds its "
            "outputs on unmixed views: drop --mixup/--cutmix, or run the teacher live."
        )
    try:
        needs = get_loss_class(args.distill_loss).needs
    except KeyError:
        return  # an unknown loss is reported with the loss's own checks
    if needs.labels or needs.strong_view or needs.sample_index:
        what = (
            "the class labels" if needs.labels
            else "a second, strongly augmented view" if needs.strong_view
            else "each sample's index (a memory of per-sample features)"
        )  # fmt: skip
        raise UsageError(
            f"Loss {args.distill_loss!r} reads {what}, which Mixup/CutMix blend away: drop --mixup/--cutmix, or use "
            "a loss that compares outputs only (kd, dist, ...)."
        )


def draw_mix(
    rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5
) -> tuple[float, bool]:
    """(λ, use CutMix) for one batch, by timm's `Mixup._params_per_batch` rule; λ = 1 means no mixing."""
    if rng.random() >= prob:
        return 1.0, False
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    return float(rng.beta(alpha, alpha)), use_cutmix


def cutmix_box(
    rng: np.random.Generator, height: int, width: int, lam: float
) -> tuple[tuple[int, int, int, int], float]:
    """timm's `rand_bbox` (no margin) and λ corrected to the box's share: ((top, bottom, left, right), λ)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, width)
    box = int(top), int(bottom), int(left), int(right)
    return box, 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(height * width)


def mix_images(images: torch.Tensor, lam: float, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """`images` (B, C, H, W) mixed with their reverse: blended by λ (Mixup), or the reverse pasted into `box`."""
    if box is None:
        return images * lam + images.flip(0) * (1.0 - lam)
    top, bottom, left, right = box
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
    return mixed


def soft_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """timm's `mixup_target`: smoothed one-hot targets of the batch and of its reverse, weighted λ and 1 - λ."""
    off = smoothing / num_classes
    one_hot = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    one_hot.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)
    return one_hot * lam + one_hot.flip(0) * (1.0 - lam)


def _scaled(box: tuple[int, int, int, int], size: tuple[int, int], other: tuple[int, int]) -> tuple[int, ...]:
    """The same region of an image of another size (a teacher's own pixels)."""
    (height, width), (h2, w2) = size, other
    top, bottom, left, right = box
    return round(top * h2 / height), round(bottom * h2 / height), round(left * w2 / width), round(right * w2 / width)


class BatchMixer:
    """Mixes a training batch's images (every image key: the student's and the teachers' pixels) and turns its
    labels into soft targets. Called once per micro-batch with the optimiser step it belongs to."""

    def __init__(
        self,
        mixup_alpha: float,
        cutmix_alpha: float,
        num_classes: int,
        smoothing: float,
        seed: int,
        process_index: int = 0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob
        self.num_classes, self.smoothing, self.seed, self.process_index = num_classes, smoothing, seed, process_index
        self._step, self._micro = -1, 0

    @classmethod
    def for_run(cls, args: Any, model: Any, *, soft_targets: bool = True) -> BatchMixer | None:
        """The mixer of a run's arguments (`distill_mixup`, `distill_cutmix`) over `model`'s classes, or None;
        without `soft_targets` (label-free distillation) it mixes the images and drops the labels."""
        if not args.mixes_batches:
            return None
        num_classes = getattr(getattr(model, "config", None), "num_labels", None) if soft_targets else None
        if soft_targets and not num_classes:
            raise UsageError("Mixup/CutMix make soft targets over the student's classes: no config.num_labels.")
        return cls(
            args.distill_mixup,
            args.distill_cutmix,
            num_classes,
            args.label_smoothing_factor,
            seed=args.seed,
            process_index=args.process_index,
        )

    def __call__(self, inputs: dict[str, Any], step: int) -> dict[str, Any]:
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        rng = np.random.default_rng([self.seed, step, self._micro, self.process_index])
        lam, use_cutmix = draw_mix(rng, self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob)
        pixels = inputs["pixel_values"]
        size = tuple(pixels.shape[-2:])
        box = None
        if use_cutmix and lam < 1.0:
            box, lam = cutmix_box(rng, size[0], size[1], lam)
        mixed = dict(inputs)
        if lam < 1.0:
            for key, value in inputs.items():
                if is_image_key(key) and torch.is_tensor(value) and value.ndim == 4:
                    other = tuple(value.shape[-2:])
                    region = box if box is None or other == size else _scaled(box, size, other)
                    mixed[key] = mix_images(value, lam, region)
        if self.num_classes is None:  # images only: a mixed image has no label of its own
            mixed.pop(LABELS, None)
        else:
            mixed[LABELS] = soft_targets(inputs[LABELS], self.num_classes, lam, self.smoothing)
        return mixed
