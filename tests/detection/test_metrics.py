"""COCO detection metrics against pycocotools' COCOeval run directly on the same boxes written as COCO JSON dicts,
hand-computed average precisions, and transformers' own image processors (post-processing, label normalisation)."""

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import DetrImageProcessor, RTDetrImageProcessor

from hfkd.tasks.detection.metrics import (
    HEADLINE_KEYS,
    DetectionMetrics,
    normalised_to_xyxy,
    padded_frame_sizes,
    post_process,
    targets_to_xyxy,
)
from hfkd.utils.errors import UsageError

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402


def _prediction(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}  # fmt: skip


def _xywh(box):
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _coco_reference(predictions, targets):
    """pycocotools' COCOeval on the same images: `map`... `mar_100` from its summary, `map_<class id>` per class with
    ground truth (COCO leaves the others undefined)."""
    images = [{"id": i, "width": 1000, "height": 1000} for i in range(len(targets))]
    annotations, detections, classes = [], [], set()
    for image_id, (prediction, target) in enumerate(zip(predictions, targets)):
        for box, label in zip(target["boxes"], target["labels"].tolist()):
            x, y, w, h = _xywh(box)  # ids from 1: COCOeval takes id 0 for "unmatched"
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            classes.add(label)
        scores, labels = prediction["scores"].tolist(), prediction["labels"].tolist()
        for box, score, label in zip(prediction["boxes"], scores, labels):
            detections.append({"image_id": image_id, "category_id": label, "bbox": _xywh(box), "score": score})
            classes.add(label)
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": c, "name": str(c)} for c in sorted(classes)]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        results = ground_truth.loadRes(detections)

        def stats(category_ids=None):
            evaluation = COCOeval(ground_truth, results, "bbox")
            if category_ids is not None:
                evaluation.params.catIds = category_ids
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            return evaluation.stats

        summary = stats()
        reference = dict(zip(HEADLINE_KEYS, summary[:9]))
        reference.update({f"map_{c}": stats([c])[0] for c in sorted(classes)})
    return {key: float(value) for key, value in reference.items() if value >= 0}


def _known_case():
    """Two images. Class 1: a box found at IoU 0.88 (score 0.9), a false positive (0.8), a box found at IoU 0.72
    (0.7). Class 2: one box found at IoU 0.82 (no IoU falls on a COCO threshold). Class 3: one box missed."""
    predictions = [
        _prediction([[10, 10, 50, 45.2], [60, 60, 90, 90]], [0.9, 0.8], [1, 1]),
        _prediction([[0, 0, 20, 18], [30, 30, 130, 112]], [0.7, 0.95], [1, 2]),
    ]
    targets = [
        _target([[10, 10, 50, 50]], [1]),
        _target([[0, 0, 20, 25], [30, 30, 130, 130], [40, 0, 70, 20]], [1, 2, 3]),
    ]
    return predictions, targets


def _random_case(num_images=6, num_classes=4, seed=0):
    """Images with jittered copies of their boxes, a few spurious boxes, one image without ground truth and one
    without predictions."""
    g = torch.Generator().manual_seed(seed)
    predictions, targets = [], []
    for index in range(num_images):
        count = 0 if index == 1 else int(torch.randint(1, 6, (1,), generator=g))
        corner = torch.rand(count, 2, generator=g) * 300
        boxes = torch.cat([corner, corner + 8 + torch.rand(count, 2, generator=g) * 150], dim=1)
        labels = torch.randint(0, num_classes, (count,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
        if index == 2:
            predictions.append(_prediction([], [], []))
            continue
        found = torch.rand(count, generator=g) < 0.8
        jitter = boxes[found] + torch.randn(int(found.sum()), 4, generator=g) * 6
        extra = torch.rand(2, 2, generator=g) * 300
        spurious = torch.cat([extra, extra + 20], dim=1)
        predictions.append({
            "boxes": torch.cat([jitter, spurious]),
            "scores": torch.rand(len(jitter) + 2, generator=g),
            "labels": torch.cat([labels[found], torch.randint(0, num_classes, (2,), generator=g)]),
        })  # fmt: skip
    return predictions, targets


def _assert_same(ours, reference):
    assert ours.keys() == reference.keys()
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key


def test_perfect_predictions_give_one():
    _, targets = _random_case()
    predictions = [{**t, "scores": torch.linspace(0.9, 0.5, len(t["labels"]))} for t in targets]
    metrics = DetectionMetrics()
    metrics.update(predictions, targets)
    result = metrics.compute()
    assert {"map", "map_50", "map_75", "mar_1", "mar_10", "mar_100"} <= result.keys()
    assert all(value == pytest.approx(1.0) for key, value in result.items() if key != "mar_1"), result
    assert 0 < result["mar_1"] <= 1  # one detection per image and class cannot recall every box


def test_known_case_against_pycocotools_and_by_hand():
    predictions, targets = _known_case()
    metrics = DetectionMetrics()
    metrics.update(predictions, targets)
    result = metrics.compute()
    _assert_same(result, _coco_reference(predictions, targets))
    # COCO's 101-point interpolated precision. Class 1 at IoU 0.5: hits at recall 0.5 (precision 1) and recall 1
    # (precision 2/3, after the false positive); at 0.75 only the first hit counts. Class 2 is 1, class 3 is 0.
    class_1_ap50, class_1_ap75 = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert result["map_50"] == pytest.approx((class_1_ap50 + 1 + 0) / 3, abs=1e-6)
    assert result["map_75"] == pytest.approx((class_1_ap75 + 1 + 0) / 3, abs=1e-6)
    assert result["map_3"] == 0.0
    assert all(0.0 <= value <= 1.0 for value in result.values())


def test_per_class_keys_take_their_names_and_omit_undefined_classes():
    predictions = [_prediction([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 2, 7])]
    targets = [_target([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    metrics = DetectionMetrics({0: "cat", 1: "dog", 2: "bird", 3: "fish"})
    metrics.update(predictions, targets)
    result = metrics.compute()
    assert result["map_cat"] == pytest.approx(1.0)
    assert result["map_dog"] == 0.0  # labelled, never predicted
    # bird and 7 are predicted but never labelled, fish neither: COCO leaves them undefined
    assert not {"map_bird", "map_fish", "map_7"} & result.keys()
    assert "map_large" not in result and "map_small" in result  # no large ground-truth box
    with pytest.raises(UsageError, match="small"):
        DetectionMetrics({0: "small"})


def test_images_without_ground_truth_or_predictions():
    predictions, targets = _random_case()
    assert len(targets[1]["labels"]) == 0 and len(predictions[2]["labels"]) == 0
    metrics = DetectionMetrics()
    metrics.update(predictions, targets)
    _assert_same(metrics.compute(), _coco_reference(predictions, targets))
    # An image with nothing at all, and empty tensors of any shape, change nothing.
    metrics.update([{"boxes": torch.zeros(0), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
                   [{"boxes": torch.zeros(0), "labels": torch.zeros(0)}])  # fmt: skip
    _assert_same(metrics.compute(), _coco_reference(predictions, targets))
    assert DetectionMetrics().compute() == {}


def test_accumulating_batches_equals_one_update_and_reset_forgets():
    predictions, targets = _random_case(num_images=9, seed=3)
    whole = DetectionMetrics()
    whole.update(predictions, targets)
    batched = DetectionMetrics()
    batched.update(predictions[:7], targets[:7])
    batched.reset()
    for start in range(0, 9, 2):
        batched.update(predictions[start : start + 2], targets[start : start + 2])
    assert batched.compute() == whole.compute()
    assert all(len(boxes) <= 7 for boxes in batched._metric.detection_box)  # one small CPU tensor per image
    assert all(boxes.device.type == "cpu" for boxes in batched._metric.detection_box)


def test_backends_agree_and_bad_inputs_are_named():
    predictions, targets = _random_case(seed=5)
    results = []
    for backend in ("faster_coco_eval", "pycocotools"):
        metrics = DetectionMetrics(backend=backend)
        metrics.update(predictions, targets)
        results.append(metrics.compute())
    _assert_same(results[0], results[1])
    with pytest.raises(UsageError, match="2 predictions but 1 targets"):
        DetectionMetrics().update(predictions[:2], targets[:1])
    with pytest.raises(UsageError, match="image 0 has no scores"):
        DetectionMetrics().update([targets[0]], [targets[0]])


def _raw_outputs(batch=2, queries=10, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, classes, generator=g) * 3
    pred_boxes = torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.1
    return logits, pred_boxes


def _assert_same_detections(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine["labels"], reference["labels"])
        torch.testing.assert_close(mine["scores"], reference["scores"])
        torch.testing.assert_close(mine["boxes"], reference["boxes"])


def test_post_process_equals_the_detr_processor():
    logits, pred_boxes = _raw_outputs()
    sizes = [(480, 640), (300, 200)]
    outputs = SimpleNamespace(logits=logits, pred_boxes=pred_boxes)
    theirs = DetrImageProcessor().post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    _assert_same_detections(post_process(logits, pred_boxes, sizes, use_sigmoid=False), theirs)
    _assert_same_detections(post_process(logits, pred_boxes, torch.tensor(sizes), use_sigmoid=False), theirs)
    best = post_process(logits, pred_boxes, sizes, use_sigmoid=False, top_k=4)
    for mine, reference in zip(best, theirs):
        order = reference["scores"].argsort(descending=True)[:4]
        _assert_same_detections([mine], [{key: value[order] for key, value in reference.items()}])


def test_post_process_equals_the_rt_detr_processor():
    logits, pred_boxes = _raw_outputs(queries=12, classes=5, seed=1)
    sizes = [(480, 640), (300, 200)]
    outputs = SimpleNamespace(logits=logits, pred_boxes=pred_boxes)
    theirs = RTDetrImageProcessor().post_process_object_detection(
        outputs, threshold=0.0, target_sizes=sizes, use_focal_loss=True
    )
    ours = post_process(logits, pred_boxes, sizes, use_sigmoid=True, top_k=logits.shape[1])
    _assert_same_detections(ours, theirs)
    # the default keeps the 100 best (query, class) pairs, or all 60 here, the best first
    every = post_process(logits.bfloat16(), pred_boxes, sizes, use_sigmoid=True)
    assert [len(p["scores"]) for p in every] == [60, 60]
    assert all(bool((p["scores"][:-1] >= p["scores"][1:]).all()) for p in every)
    with pytest.raises(UsageError, match="2 images but 1 target sizes"):
        post_process(logits, pred_boxes, sizes[:1], use_sigmoid=True)


def test_post_processed_targets_as_predictions_score_one():
    """A model output that reproduces its normalised targets (DETR label convention) scores 1 once both go through
    post_process and targets_to_xyxy at the original sizes."""
    labels = [
        {"class_labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.2]]),
         "orig_size": torch.tensor([480, 640])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.5]]),
         "orig_size": torch.tensor([300, 200])},
    ]  # fmt: skip
    queries, classes = 5, 3
    logits = torch.full((2, queries, classes + 1), -4.0)
    logits[:, :, -1] = 4.0  # DETR's no-object class for the unused queries
    pred_boxes = torch.full((2, queries, 4), 0.5)
    for index, label in enumerate(labels):
        count = len(label["class_labels"])
        logits[index, torch.arange(count), label["class_labels"]] = 6.0
        pred_boxes[index, :count] = label["boxes"]
    sizes = [label["orig_size"] for label in labels]
    metrics = DetectionMetrics()
    metrics.update(post_process(logits, pred_boxes, sizes, use_sigmoid=False), targets_to_xyxy(labels))
    result = metrics.compute()
    assert result["map"] == pytest.approx(1.0) and result["map_50"] == pytest.approx(1.0)


def test_targets_to_xyxy_recovers_the_annotations_through_the_detr_processor():
    """Boxes annotated on two images of different sizes, resized and padded by transformers' DETR processor, come
    back in original pixels: at `orig_size` where nothing was padded, and at `padded_frame_sizes` everywhere."""
    boxes = [[[5.0, 6.0, 25.0, 16.0]], [[1.0, 2.0, 4.0, 6.0], [10.0, 20.0, 25.0, 45.0]]]
    annotations = [
        {"image_id": i, "annotations": [{"bbox": _xywh(b), "category_id": 3 + k, "area": 1.0, "iscrowd": 0}
                                        for k, b in enumerate(image_boxes)]}
        for i, image_boxes in enumerate(boxes)
    ]  # fmt: skip
    images = [np.zeros((40, 60, 3), np.uint8), np.zeros((50, 30, 3), np.uint8)]
    processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    encoded = processor(images=images, annotations=annotations, return_tensors="pt")
    labels = encoded["labels"]
    sizes = padded_frame_sizes([label["orig_size"] for label in labels], encoded["pixel_mask"])
    targets = targets_to_xyxy(labels, sizes)
    for target, expected in zip(targets, boxes):
        torch.testing.assert_close(target["boxes"], torch.tensor(expected), atol=1e-4, rtol=0)
    assert [t["labels"].tolist() for t in targets] == [[3], [3, 4]]
    assert targets[0]["iscrowd"].tolist() == [0]
    # image 0 (40 x 60 -> 64 x 96) fills the padded width: its x coordinates need no padding correction
    at_orig_size = targets_to_xyxy(labels)[0]["boxes"]
    torch.testing.assert_close(at_orig_size[:, 0::2], torch.tensor(boxes[0])[:, 0::2], atol=1e-4, rtol=0)
    assert not torch.allclose(at_orig_size[:, 1::2], torch.tensor(boxes[0])[:, 1::2], atol=1e-2)


def test_normalised_to_xyxy():
    boxes = normalised_to_xyxy(torch.tensor([[0.5, 0.25, 0.5, 0.5]]), (200, 100))
    torch.testing.assert_close(boxes, torch.tensor([[25.0, 0.0, 75.0, 100.0]]))
    assert normalised_to_xyxy(torch.zeros(0), (10, 10)).shape == (0, 4)
