"""Semantic segmentation metrics: mean IoU, mean accuracy, overall accuracy and per-class IoU, computed from per-image
counts so that evaluation never keeps a prediction map or a label map in memory.

`pixel_counts` reduces one batch to four per-class counts per image (intersection, union, predicted area, labelled
area), after resizing the logits to the label size as transformers' `run_semantic_segmentation.py` does (bilinear,
`align_corners=False`) and dropping the pixels whose label is the ignore index (or negative: the Trainer pads labels
with -100 across processes). `segmentation_metrics` sums the counts of every image and gives the numbers of
`evaluate`'s `mean_iou` (its definitions: IoU = intersection / union per class, NaN for a class that is neither
labelled nor predicted; mean IoU and mean accuracy are the means over the other classes; overall accuracy is the
share of labelled pixels predicted right).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

COUNTS = ("intersection", "union", "predicted", "labelled")
"""The four counts of `pixel_counts`, in that order along dimension 1."""


def pixel_counts(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = 255) -> torch.Tensor:
    """(B, 4, C) int64 counts of one batch: per image and class, the pixels in intersection and union of prediction
    and label, predicted, and labelled; pixels labelled `ignore_index` (or negative) count nowhere.

    Args:
        logits (`torch.Tensor`): (B, C, h, w) class scores at any resolution; resized to the labels' (H, W).
        labels (`torch.Tensor`): (B, H, W) class ids.
        ignore_index (`int`, *optional*, defaults to 255): the label of pixels that are not scored.
    """
    if logits.ndim != 4 or labels.ndim != 3:
        raise ValueError(
            f"pixel_counts takes (B, C, h, w) logits and (B, H, W) labels, got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    num_classes = logits.shape[1]
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    predicted = logits.argmax(dim=1)
    labels = labels.long()
    valid = (labels >= 0) & (labels != ignore_index) & (labels < num_classes)
    counts = []
    for prediction, label, mask in zip(predicted, labels, valid):
        prediction, label = prediction[mask], label[mask]
        area_predicted = torch.bincount(prediction, minlength=num_classes)
        area_labelled = torch.bincount(label, minlength=num_classes)
        intersection = torch.bincount(label[prediction == label], minlength=num_classes)
        union = area_predicted + area_labelled - intersection
        counts.append(torch.stack([intersection, union, area_predicted, area_labelled]))
    return torch.stack(counts)


def segmentation_metrics(
    counts: np.ndarray | torch.Tensor, id2label: Mapping[int, str] | None = None
) -> dict[str, float]:
    """The metrics of per-image counts from `pixel_counts` ((N, 4, C), or their (4, C) sum).

    Returns `mean_iou`, `mean_accuracy`, `overall_accuracy`, and `iou_<class>` / `accuracy_<class>` for each class
    (its name from `id2label`, else its index); a class that is neither labelled nor predicted gets NaN.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim == 3:
        counts = counts.sum(axis=0)
    intersection, union, _, labelled = counts
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / union
        accuracy = intersection / labelled
    metrics = {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
        "overall_accuracy": float(intersection.sum() / labelled.sum()) if labelled.sum() else float("nan"),
    }
    for index in range(len(iou)):
        name = (id2label or {}).get(index, str(index))
        metrics[f"iou_{name}"] = float(iou[index])
        metrics[f"accuracy_{name}"] = float(accuracy[index])
    return metrics


class SegmentationMetrics:
    """`compute_metrics` for the Trainer when predictions are `pixel_counts` (the trainer's evaluation reduces each
    batch to them). Works with and without `batch_eval_metrics` (then the counts are summed as batches come)."""

    def __init__(self, id2label: Mapping[int, str] | None = None) -> None:
        self.id2label = dict(id2label or {})
        self._running: np.ndarray | None = None

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        counts = eval_pred.predictions
        counts = counts[0] if isinstance(counts, (tuple, list)) else counts
        counts = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
        total = counts.reshape(-1, *counts.shape[-2:]).sum(axis=0)
        self._running = total if self._running is None else self._running + total
        if not compute_result:
            return {}
        running, self._running = self._running, None
        return segmentation_metrics(running, self.id2label)
