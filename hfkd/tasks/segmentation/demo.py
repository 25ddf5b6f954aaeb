"""The embedded segmentation demo data, offline: scenes composed of real Fashion-MNIST images.

No segmentation data set can be installed offline, so each scene is a canvas onto which one to three Fashion-MNIST
items (scikit-learn's digits when Fashion-MNIST is not on the machine) are pasted at random places and scales; a
pixel's label is the class of the item drawn on top of it (1..10) where that item's ink is visible, else 0
(background). Training scenes use the Fashion-MNIST training images, evaluation scenes its test images. Every scene
is a pure function of (seed, split, index), so the same seed gives the same data on every machine.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from hfkd.data.demo import FASHION_MNIST_LABELS, SCENES_NAME, fashion_mnist_arrays, load_demo_dataset

DEMO_NAME = SCENES_NAME
"""`--dataset fashion-mnist-scenes` (`--task semantic-segmentation`)."""

CANVAS = 64
INK = 40  # an item's pixels brighter than this (of 255) are the item; the rest of its square shows what is beneath


def _scene(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    canvas = rng.integers(0, 30, size=(CANVAS, CANVAS)).astype(np.uint8)  # faint noise, not a flat background
    mask = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        pick = int(rng.integers(len(items)))
        side = int(rng.integers(20, 45))
        item = np.asarray(PILImage.fromarray(items[pick]).resize((side, side), PILImage.BILINEAR))
        top, left = int(rng.integers(0, CANVAS - side + 1)), int(rng.integers(0, CANVAS - side + 1))
        ink = item > INK
        region = (slice(top, top + side), slice(left, left + side))
        canvas[region][ink] = item[ink]
        mask[region][ink] = labels[pick] + 1
    return canvas, mask


def _split(items: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        canvas, mask = _scene(items, labels, rng)
        images.append(PILImage.fromarray(canvas).convert("RGB"))
        masks.append(PILImage.fromarray(mask))
    features = Features({"image": Image(), "label": Image()})
    return Dataset.from_dict({"image": images, "label": masks}, features=features)


def load_demo_scenes(
    *, train_scenes: int = 3000, eval_scenes: int = 500, seed: int = 0
) -> tuple[DatasetDict, list[str], str]:
    """(splits "train" and "validation", the class names with "background" first, the source of the items)."""
    arrays, items, source = load_demo_items(seed=seed)
    names = ["background", *items]
    parts = {}
    for split, source_split, count, offset in (
        ("train", "train", train_scenes, 0),
        ("validation", "test", eval_scenes, 1),
    ):
        pixels, labels = arrays[source_split]
        parts[split] = _split(pixels, labels, count, seed * 2 + offset)
    return DatasetDict(parts), names, source


def load_demo_items(*, seed: int = 0) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    """The items the demo scenes are made of: `{"train": (images, labels), "test": (...)}` (uint8 (N, H, W), int
    (N,)), their class names and their source. Fashion-MNIST's idx files when on the machine, else the classification
    demo's fallback (the Hub copy, else scikit-learn's digits), decoded once."""
    found = fashion_mnist_arrays()
    if found is not None:
        arrays, source = found
        return arrays, list(FASHION_MNIST_LABELS), source
    items, source = load_demo_dataset("fashion-mnist", seed=seed)
    arrays = {split: _arrays(items[split]) for split in ("train", "test")}
    return arrays, list(items["train"].features["label"].names), source


def _arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and (N,) labels of a grayscale image dataset, decoded in one pass over the column."""
    labels = np.asarray(dataset.with_format("numpy")["label"])
    pixels = np.stack([np.asarray(image, dtype=np.uint8) for image in dataset.with_format("numpy")["image"]])
    return pixels, labels
