"""Detection data sets as the splits "train" and "eval" of `run_object_detection.py`'s layout (an image column and an
`objects` column with COCO x, y, w, h boxes and categories), from the Hub (`cppe-5`), a local `save_to_disk` or parquet
folder, a COCO folder (`annotations/instances_<split>.json` and its images), or the embedded demo scenes."""

from __future__ import annotations

import glob
import os
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk
from transformers.utils import logging

from hfkd.data.datasets import _pick_splits
from hfkd.tasks.detection.data import detect_detection_columns, load_coco_folder
from hfkd.tasks.segmentation.data import read_id2label
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


def _is_coco(folder: str) -> bool:
    return bool(glob.glob(os.path.join(folder, "annotations", "instances_*.json")))


def _read(name_or_path: str, config_name: str | None, seed: int, cache_dir: str | None, **kwargs: Any):
    """(raw splits, where they came from, class names when the source names them)."""
    from hfkd.tasks.detection.demo import DEMO_NAME, load_demo_detection_scenes

    if name_or_path == DEMO_NAME:
        raw, names = load_demo_detection_scenes(seed=seed)
        return raw, "embedded demo scenes (Fashion-MNIST items on a canvas, boxes from their extents)", names
    if os.path.isdir(name_or_path) and _is_coco(name_or_path):
        raw = load_coco_folder(name_or_path)
        return raw, f"COCO folder {name_or_path}", [raw.id2label[i] for i in range(len(raw.id2label))]
    if os.path.isdir(name_or_path) and any(
        os.path.isfile(os.path.join(name_or_path, f)) for f in ("dataset_dict.json", "state.json")
    ):
        return load_from_disk(name_or_path), f"save_to_disk folder {name_or_path}", None
    if os.path.isdir(name_or_path) and glob.glob(os.path.join(name_or_path, "**", "*.parquet"), recursive=True):
        raw = load_dataset("parquet", data_dir=name_or_path, cache_dir=cache_dir, **kwargs)
        return raw, f"parquet folder {name_or_path}", None
    if os.path.isdir(name_or_path):
        raise UsageError(
            f"{name_or_path!r} is neither a COCO folder (annotations/instances_<split>.json), a save_to_disk folder "
            "nor a folder of parquet files with an image column and an objects column (bbox, category)."
        )
    raw = load_dataset(name_or_path, config_name, cache_dir=cache_dir, **kwargs)
    return raw, f"Hub {name_or_path}" + (f" ({config_name})" if config_name else ""), None


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
    raw, source, names = _read(name_or_path, config_name, seed, cache_dir, **kwargs)
    if isinstance(raw, Dataset):
        raw = DatasetDict({train_split: raw})
    if train_split not in raw and "train2017" in raw:
        train_split, eval_split = "train2017", eval_split or ("val2017" if "val2017" in raw else None)
    train, evaluation, _ = _pick_splits(raw, source, train_split, eval_split, eval_fraction, seed)
    dataset = DatasetDict({"train": train, "eval": evaluation})
    for split, limit in (("train", max_train_samples), ("eval", max_eval_samples)):
        if limit is not None and limit < len(dataset[split]):
            dataset[split] = dataset[split].shuffle(seed=seed).select(range(limit))
    names_file = os.path.join(name_or_path, "id2label.json")
    if names is None and os.path.isfile(names_file):
        names = [name for _, name in sorted(read_id2label(names_file).items())]
    if names is None:
        _, objects = detect_detection_columns(dataset["train"])
        names = category_names(dataset["train"], objects)
    dataset.source, dataset.id2label = source, dict(enumerate(names)) if names else None
    logger.info(f"Detection data from {source}: {len(dataset['train'])} train / {len(dataset['eval'])} eval rows.")
    return dataset
