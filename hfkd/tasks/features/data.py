"""The data of label-free distillation: training images without labels, an evaluation split with or without them.

`load_feature_dataset` reads splits "train" and "eval" from image folders (`--train_dir`, a folder of images with or
without class subfolders; `--validation_dir`, labelled by its class subfolders when it has them), from a local folder
passed as `--dataset` (flat or in imagefolder layout), or from anything `hfkd.data.load_image_dataset` reads (a Hub
dataset, whose training split may lack a label column). The training split's labels, if any, are dropped: nothing in
training reads them. `feature_columns` finds the image column and the evaluation split's label column (`None`: the
evaluation reports the loss alone).
"""

from __future__ import annotations

import os
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset
from transformers.utils import logging

from hfkd.data.datasets import IMAGE_COLUMN_NAMES, LABEL_COLUMN_NAMES, keep_at_most, load_image_dataset
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


def _folder(path: str, cache_dir: str | None) -> Dataset:
    """Every image under `path` (`datasets`' imagefolder: a `label` column when the images sit in class folders)."""
    if not os.path.isdir(path):
        raise UsageError(f"Image folder {path!r} does not exist; pass a folder of images (class subfolders optional).")
    return load_dataset("imagefolder", data_dir=path, split="train", cache_dir=cache_dir)


def _has_class_folders(path: str) -> bool:
    return any(entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(path))


def load_feature_dataset(
    dataset: str,
    *,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 42,
    cache_dir: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    **kwargs: Any,
) -> DatasetDict:
    """Splits "train" (no labels) and "eval" (its labels kept) with a `source` attribute; see the module docstring.
    `kwargs` (`config_name`, `train_split`, `eval_split`) go to `load_image_dataset` for other data."""
    folder = train_dir or (dataset if os.path.isdir(dataset) and not _has_class_folders(dataset) else None)
    if folder is not None:
        train = _folder(folder, cache_dir)
        if validation_dir is not None:
            evaluation, source = _folder(validation_dir, cache_dir), f"image folders {folder} + {validation_dir}"
        else:
            parts = train.train_test_split(test_size=eval_fraction, seed=seed)
            train, evaluation, source = parts["train"], parts["test"], f"image folder {folder}"
        splits = DatasetDict({"train": train, "eval": evaluation})
    else:
        splits = load_image_dataset(dataset, seed=seed, cache_dir=cache_dir, **kwargs)
        source = getattr(splits, "source", dataset)
    splits = keep_at_most(splits, max_train_samples, max_eval_samples, seed)
    splits["train"] = _without_labels(splits["train"])
    splits.source = source
    return splits


def _without_labels(train: Dataset) -> Dataset:
    labels = [name for name, feature in train.features.items() if isinstance(feature, ClassLabel)]
    labels += [name for name in LABEL_COLUMN_NAMES if name in train.column_names and name not in labels]
    if labels:
        logger.info(f"Label-free distillation: the training split's {', '.join(labels)} column is not read.")
    return train.remove_columns(labels) if labels else train


def feature_columns(
    splits: DatasetDict, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str | None]:
    """(image column, the evaluation split's label column or `None`): given names checked, else detected."""
    features = splits["train"].features
    if image_column is None:
        typed = [name for name, feature in features.items() if isinstance(feature, Image)]
        named = [name for name in IMAGE_COLUMN_NAMES if name in features]
        image_column = (typed or named or [None])[0]
    if image_column not in features:
        raise UsageError(
            f"The training split has no image column{f' {image_column!r}' if image_column else ''}; its columns are "
            f"{list(features)}. Set --image_column."
        )
    eval_features = splits["eval"].features
    if label_column is not None and label_column not in eval_features:
        raise UsageError(
            f"The evaluation split has no column {label_column!r}: its columns are {list(eval_features)}."
        )
    if label_column is None:
        typed = [name for name, feature in eval_features.items() if isinstance(feature, ClassLabel)]
        label_column = (typed or [name for name in LABEL_COLUMN_NAMES if name in eval_features] or [None])[0]
    return image_column, label_column
