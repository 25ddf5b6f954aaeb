"""The detection demo scenes: the run_object_detection.py layout, boxes that tightly bound each item's visible ink,
and data that the checks, the transform and the collator take as they are."""

import numpy as np
import pytest

from hfkd.tasks.detection.data import (
    DetectionCollator,
    DetectionTransform,
    check_detection_rows,
    detect_detection_columns,
)
from hfkd.tasks.detection.demo import box_iou, load_demo_detection_scenes
from hfkd.tasks.segmentation.demo import INK


@pytest.fixture(scope="module")
def scenes():
    return load_demo_detection_scenes(train_scenes=40, eval_scenes=8, seed=3, canvas=96)


def test_layout_and_class_names(scenes):
    data, names = scenes
    assert set(data) == {"train", "validation"} and (len(data["train"]), len(data["validation"])) == (40, 8)
    assert len(names) == 10 and data["train"].features["objects"]["category"].feature.names == names
    assert detect_detection_columns(data) == ("image", "objects")
    row = data["train"][0]
    assert row["image"].size == (96, 96) and (row["width"], row["height"]) == (96, 96) and row["image_id"] == 0
    assert set(row["objects"]) == {"id", "area", "bbox", "category"}
    counts = [len(row["objects"]["bbox"]) for row in data["train"]]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for split in data:
        check_detection_rows(data[split], "image", "objects", len(names), split=split)


def _extent(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def test_boxes_tightly_bound_the_items_ink(scenes):
    data, _ = scenes
    singles = 0
    for row in data["train"]:
        ink = np.asarray(row["image"].convert("L")) > INK
        boxes = [[int(v) for v in box] for box in row["objects"]["bbox"]]
        covered = np.zeros_like(ink)
        for (x, y, w, h), area in zip(boxes, row["objects"]["area"]):
            inside = ink[y : y + h, x : x + w]
            covered[y : y + h, x : x + w] = True
            # tight: every edge of the box touches ink, and the item's ink area fits in its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert 0 < area <= inside.sum()
        assert not (ink & ~covered).any(), "every pixel of ink lies in some item's box"
        if len(boxes) == 1:
            singles += 1
            assert row["objects"]["bbox"][0] == _extent(ink)
            assert row["objects"]["area"][0] == ink.sum()
    assert singles > 0


def test_items_overlap_little(scenes):
    data, _ = scenes
    overlaps = [
        box_iou(np.asarray(a), np.asarray(b))
        for row in data["train"]
        for i, a in enumerate(row["objects"]["bbox"])
        for b in row["objects"]["bbox"][i + 1 :]
    ]
    # the placements were drawn with IoU <= 0.3; visible boxes are those boxes, trimmed where a later item covers
    assert overlaps and max(overlaps) <= 0.5


def test_box_iou_by_hand():
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 10, 10])) == pytest.approx(50 / 150)
    assert box_iou(np.array([0, 0, 2, 2]), np.array([5, 5, 2, 2])) == 0.0


def test_scenes_are_a_function_of_the_seed(scenes):
    again, _ = load_demo_detection_scenes(train_scenes=3, eval_scenes=1, seed=3, canvas=96)
    data, _ = scenes
    assert again["train"][:3]["objects"] == data["train"][:3]["objects"]
    assert np.array_equal(np.asarray(again["train"][2]["image"]), np.asarray(data["train"][2]["image"]))


def test_scenes_go_through_transform_and_collator(scenes):
    data, names = scenes
    part = data["validation"].with_transform(
        DetectionTransform(num_labels=len(names), scales=(64,), max_size=None, train=False)
    )
    batch = DetectionCollator()([part[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["pixel_mask"].all()
    expected = [len(data["validation"][i]["objects"]["bbox"]) for i in range(4)]
    assert [len(t["boxes"]) for t in batch["labels"]] == expected
