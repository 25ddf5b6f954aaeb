"""Detection data sets as the splits "train" and "eval" of `run_object_detection.py`'s layout (an image column and an
`objects` column with COCO x, y, w, h boxes and categories), from the Hub (`cppe-5`), a local `save_to_disk` or parquet
folder, a COCO folder (`annotations/instances_<split>.json` and its images), or the embedded demo scenes."""

from __future__ import annotations

import functools
import glob
import os
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict

from hfkd.data.datasets import load_dense_dataset
from hfkd.tasks.detection.data import detect_detection_columns, load_coco_folder
from hfkd.tasks.segmentation.data import read_id2label


def _is_coco(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "annotations", "instances_*.json")))


DETECTION_FOLDERS = (
    "{name_or_path!r} is neither a COCO folder (annotations/instances_<split>.json), a save_to_disk folder nor a "
    "folder of parquet files with an image column and an objects column (bbox, category)."
)
"""The refusal of a folder in none of the layouts (`load_dense_dataset`'s `folder_error`)."""


def _read_own(name_or_path: str, seed: int) -> tuple[DatasetDict, str, list[str]] | None:
    """(raw splits, where they came from, class names) of the detection layouts: the demo scenes, a COCO folder."""
    from hfkd.tasks.detection.demo import DEMO_NAME, load_demo_detection_scenes

    if name_or_path == DEMO_NAME:
        raw, names = load_demo_detection_scenes(seed=seed)
        return raw, "embedded demo scenes (Fashion-MNIST items on a canvas, boxes from their extents)", names
    if os.path.isdir(name_or_path) and _is_coco(name_or_path):
        raw = load_coco_folder(name_or_path)
        return raw, f"COCO folder {name_or_path}", [raw.id2label[i] for i in range(len(raw.id2label))]
    return None


def category_names(split: Dataset, objects_column: str) -> list[str] | None:
    """The class names of a split's `objects.category` when it is a `ClassLabel` (cppe-5, the demo, COCO folders)."""
    feature = split.features.get(objects_column)
    if not isinstance(feature, dict):  # a List of structs
        feature = getattr(feature, "feature", {})
    category = feature.get("category") if isinstance(feature, dict) else None
    if hasattr(category, "feature"):  # a List of ClassLabel
        category = category.feature
    return list(category.names) if isinstance(category, ClassLabel) else None


def load_detection_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
    **kwargs: Any,
) -> DatasetDict:
    """A detection dataset as splits "train" and "eval", with its `source` and its `id2label` (the source's class
    names: a COCO folder's categories, a `ClassLabel` of `objects.category`, an `id2label.json` in a local folder; else
    `None`). COCO 2017's `train2017` / `val2017` are picked as train and eval when no split is named."""
    dataset, names = load_dense_dataset(
        name_or_path, functools.partial(_read_own, seed=seed), DETECTION_FOLDERS, task="Detection",
        config_name=config_name, train_split=train_split, eval_split=eval_split, eval_fraction=eval_fraction,
        seed=seed, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, cache_dir=cache_dir,
        fallback_splits=("train2017", "val2017"), **kwargs,
    )  # fmt: skip
    names_file = os.path.join(name_or_path, "id2label.json")
    if names is None and os.path.isfile(names_file):
        names = [name for _, name in sorted(read_id2label(names_file).items())]
    if names is None:
        _, objects = detect_detection_columns(dataset["train"])
        names = category_names(dataset["train"], objects)
    dataset.id2label = dict(enumerate(names)) if names else None
    return dataset
