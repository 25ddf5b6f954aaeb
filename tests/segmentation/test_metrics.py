"""Segmentation metrics from per-image counts, against a direct implementation of `evaluate`'s mean_iou definitions
on whole prediction and label maps."""

import numpy as np
import pytest
import torch

from hfkd.tasks.segmentation.metrics import SegmentationMetrics, pixel_counts, segmentation_metrics


def _reference(predictions: np.ndarray, labels: np.ndarray, num_classes: int, ignore: int) -> dict[str, float]:
    """evaluate's mean_iou (total_area_* summed over images, nanmean over classes), written out."""
    valid = labels != ignore
    p, y = predictions[valid], labels[valid]
    iou, acc = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (y == c))
        union = np.sum((p == c) | (y == c))
        iou.append(inter / union if union else np.nan)
        acc.append(inter / np.sum(y == c) if np.sum(y == c) else np.nan)
    return {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(acc), "overall_accuracy": np.mean(p == y),
            "iou": iou}  # fmt: skip


def test_counts_give_the_metrics_of_the_whole_maps():
    g = torch.Generator().manual_seed(0)
    num_classes, ignore = 5, 255
    logits = torch.randn(6, num_classes, 12, 10, generator=g)
    labels = torch.randint(0, num_classes, (6, 12, 10), generator=g)
    labels[:, :3] = ignore
    labels[0, 5, 5] = -100  # the Trainer's cross-process padding: never counted
    counts = torch.cat([pixel_counts(logits[:4], labels[:4]), pixel_counts(logits[4:], labels[4:])])
    ours = segmentation_metrics(counts, {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"})
    labels_np = labels.numpy().copy()
    labels_np[labels_np == -100] = ignore
    expected = _reference(logits.argmax(1).numpy(), labels_np, num_classes, ignore)
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert ours[key] == pytest.approx(expected[key], rel=1e-12)
    assert [ours[f"iou_{n}"] for n in "abcde"] == pytest.approx(expected["iou"], rel=1e-12)


def test_logits_are_resized_to_the_labels_and_absent_classes_are_nan():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # class 1 everywhere at low resolution
    labels = torch.ones(1, 8, 8, dtype=torch.long)
    metrics = segmentation_metrics(pixel_counts(logits, labels))
    assert metrics["mean_iou"] == 1.0 and metrics["overall_accuracy"] == 1.0
    assert np.isnan(metrics["iou_0"]) and np.isnan(metrics["iou_2"])


def test_running_metric_sums_batches_and_resets():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4, 6, 6), generator=g)
    metric = SegmentationMetrics()

    class Pred:
        def __init__(self, p):
            self.predictions = p

    assert metric(Pred(pixel_counts(logits[:2], labels[:2])), compute_result=False) == {}
    batched = metric(Pred(pixel_counts(logits[2:], labels[2:])), compute_result=True)
    whole = metric(Pred(pixel_counts(logits, labels)))
    assert batched == whole
