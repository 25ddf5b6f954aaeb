"""The embedded detection demo data, offline: scenes of real Fashion-MNIST items with their boxes.

Like the segmentation demo's scenes (and from the same items: Fashion-MNIST's idx files, else scikit-learn's digits),
each scene is a faintly noisy canvas onto which one to three items are pasted at random places and scales. An item's
box is the tight extent of its visible ink (its pixels brighter than `INK`, less those a later item covers) in COCO
`[x, y, width, height]` pixels, and its category is the item's class (0..9, no background class). A placement whose
box overlaps an earlier box with an IoU above `MAX_IOU` is drawn again, so items overlap only a little. Training
scenes use the items' training images, evaluation scenes their test images; every scene is a pure function of
(seed, split, index). The rows have the layout of transformers' `run_object_detection.py` (see
`hfkd.tasks.detection.data`).
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage

from hfkd.data.demo import DETECTION_SCENES_NAME
from hfkd.tasks.detection.data import detection_features
from hfkd.tasks.segmentation.demo import INK, load_demo_items

DEMO_NAME = DETECTION_SCENES_NAME
"""`--dataset fashion-mnist-detection-scenes` (`--task object-detection`)."""

MAX_IOU = 0.3
NOISE = 30  # background pixels are below this (of 255), below the ink threshold
_TRIES = 20


def box_iou(first: np.ndarray, second: np.ndarray) -> float:
    """The IoU of two `[x, y, width, height]` boxes."""
    left, top = max(first[0], second[0]), max(first[1], second[1])
    right = min(first[0] + first[2], second[0] + second[2])
    bottom = min(first[1] + first[3], second[1] + second[3])
    inter = max(0.0, right - left) * max(0.0, bottom - top)
    union = first[2] * first[3] + second[2] * second[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _scene(items: np.ndarray, labels: np.ndarray, canvas: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    image = rng.integers(0, NOISE, size=(canvas, canvas)).astype(np.uint8)
    owner = np.full((canvas, canvas), -1, dtype=np.int64)  # which item's ink shows at each pixel
    placed: list[list[int]] = []
    categories: list[int] = []
    for _ in range(int(rng.integers(1, 4))):
        pick = int(rng.integers(len(items)))
        for _ in range(_TRIES):
            side = int(rng.integers(canvas // 4, canvas // 2 + 1))
            item = np.asarray(PILImage.fromarray(items[pick]).resize((side, side), PILImage.BILINEAR))
            ink = item > INK
            if not ink.any():
                break
            top, left = int(rng.integers(0, canvas - side + 1)), int(rng.integers(0, canvas - side + 1))
            box = _extent(ink, top, left)
            if all(box_iou(np.asarray(box, float), np.asarray(other, float)) <= MAX_IOU for other in placed):
                image[top : top + side, left : left + side][ink] = item[ink]
                owner[top : top + side, left : left + side][ink] = len(placed)
                placed.append(box)
                categories.append(int(labels[pick]))
                break
    # Boxes of what is visible once every item is pasted: an item partly covered by a later one is boxed tightly
    # around its visible ink, and one covered entirely is no object of the scene.
    objects: dict[str, list] = {"id": [], "area": [], "bbox": [], "category": []}
    for number, category in enumerate(categories):
        visible = owner == number
        if visible.any():
            objects["id"].append(len(objects["id"]))
            objects["area"].append(float(visible.sum()))
            objects["bbox"].append([float(v) for v in _extent(visible, 0, 0)])
            objects["category"].append(category)
    return image, objects


def _extent(ink: np.ndarray, top: int, left: int) -> list[int]:
    """The tight `[x, y, width, height]` box of the True pixels of `ink` placed at (top, left)."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return [left + int(cols[0]), top + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _split(items: np.ndarray, labels: np.ndarray, count: int, canvas: int, seed: int, names: list[str]) -> Dataset:
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for index in range(count):
        image, objects = _scene(items, labels, canvas, rng)
        rows["image_id"].append(index)
        rows["image"].append(PILImage.fromarray(image).convert("RGB"))
        rows["width"].append(canvas)
        rows["height"].append(canvas)
        rows["objects"].append(objects)
    return Dataset.from_dict(rows, features=detection_features(names))


def load_demo_detection_scenes(
    train_scenes: int = 3000, eval_scenes: int = 500, seed: int = 0, *, canvas: int = 96
) -> tuple[DatasetDict, list[str]]:
    """(splits "train" and "validation" of `canvas` x `canvas` scenes, the class names)."""
    if canvas < 16:
        raise ValueError(f"canvas must be at least 16 pixels, got {canvas}.")
    arrays, names, _ = load_demo_items(seed=seed)
    parts = {}
    for split, source_split, count, offset in (
        ("train", "train", train_scenes, 0),
        ("validation", "test", eval_scenes, 1),
    ):
        pixels, labels = arrays[source_split]
        parts[split] = _split(pixels, labels, count, canvas, seed * 2 + offset, names)
    return DatasetDict(parts), names
