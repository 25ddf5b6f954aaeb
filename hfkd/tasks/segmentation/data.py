"""Semantic segmentation data: an image column and a mask column, from the Hub, local parquet or `save_to_disk`
folders, or the Cityscapes folder layout; class names; the checks a dataset passes before training; the batch
transform and the collator.

A mask holds one class id per pixel. `IGNORE_INDEX` (255) marks pixels that no loss or metric counts;
`reduce_labels` (transformers' `do_reduce_labels`, for datasets such as ADE20K whose 0 is "background/unlabelled")
maps 0 to 255 and every other id k to k - 1. Cityscapes' `gtFine_labelIds` are mapped to its 19 train ids (others
ignored), as the references train.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Image
from transformers.utils import logging

from hfkd.data.batch import LABELS, PIXEL_VALUES, SAMPLE_INDEX, TEACHER_PIXEL_VALUES, member_key
from hfkd.data.batch_transform import transform_rows
from hfkd.data.datasets import IMAGE_COLUMN_NAMES, load_dense_dataset
from hfkd.data.decode import decode_image
from hfkd.data.transforms import ImageConfig, sample_seed
from hfkd.tasks.segmentation.transforms import (
    IGNORE_INDEX,
    CropSettings,
    eval_resize,
    image_tensor,
    mask_tensor,
    normalize,
    train_crop,
)
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)

MASK_COLUMN_NAMES = ("label", "annotation", "segmentation_mask", "semantic_map", "mask", "labels")

# Cityscapes: gtFine labelIds -> the 19 train ids of the benchmark (cityscapesScripts' `labels.py`); others ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip


def cityscapes_lookup() -> np.ndarray:
    """A 256-entry table: Cityscapes labelId -> train id (255 for every class the benchmark ignores)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table


def reduce_labels_lookup() -> np.ndarray:
    """transformers' `do_reduce_labels`: 0 (background) -> 255, k -> k - 1, 255 stays 255."""
    table = np.arange(256, dtype=np.int64) - 1
    table[0] = IGNORE_INDEX
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table


def is_cityscapes(folder: str) -> bool:
    return os.path.isdir(os.path.join(folder, "leftImg8bit")) and os.path.isdir(os.path.join(folder, "gtFine"))


def load_cityscapes(folder: str) -> DatasetDict:
    """The Cityscapes layout: `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` with
    `gtFine/<split>/<city>/<name>_gtFine_labelIds.png`; one split per folder under `leftImg8bit/`."""
    splits = {}
    for split_dir in sorted(glob.glob(os.path.join(folder, "leftImg8bit", "*"))):
        split = os.path.basename(split_dir)
        images = sorted(glob.glob(os.path.join(split_dir, "*", "*_leftImg8bit.png")))
        masks = []
        for path in images:
            city = os.path.basename(os.path.dirname(path))
            name = os.path.basename(path).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            mask = os.path.join(folder, "gtFine", split, city, name)
            if not os.path.isfile(mask):
                raise UsageError(
                    f"Cityscapes image {path} has no label file {mask}: download gtFine_trainvaltest.zip and unpack "
                    "it next to leftImg8bit/ (the test split has no public labels: leave it out)."
                )
            masks.append(mask)
        if images:
            splits[split] = (
                Dataset.from_dict({"image": images, "label": masks})
                .cast_column("image", Image())
                .cast_column("label", Image())
            )
    if not splits:
        raise UsageError(f"{folder!r} has no images under leftImg8bit/<split>/<city>/*_leftImg8bit.png.")
    return DatasetDict(splits)


SEGMENTATION_FOLDERS = (
    "{name_or_path!r} is neither a Cityscapes folder (leftImg8bit/ + gtFine/), a save_to_disk folder nor a folder of "
    "parquet files with an image column and a mask column."
)
"""The refusal of a folder in none of the layouts (`load_dense_dataset`'s `folder_error`)."""


def _read_own(
    name_or_path: str, seed: int
) -> tuple[DatasetDict, str, tuple[dict[int, str], np.ndarray | None]] | None:
    """(raw splits, where they came from, (class names, mask lookup)) of the segmentation layouts: the demo scenes, a
    Cityscapes folder."""
    from hfkd.tasks.segmentation.demo import DEMO_NAME, load_demo_scenes

    if name_or_path == DEMO_NAME:
        raw, names, items = load_demo_scenes(seed=seed)
        return raw, f"embedded demo scenes ({items} items on a canvas)", (dict(enumerate(names)), None)
    if os.path.isdir(name_or_path) and is_cityscapes(name_or_path):
        info = dict(enumerate(CITYSCAPES_CLASSES)), cityscapes_lookup()
        return load_cityscapes(name_or_path), f"Cityscapes folder {name_or_path}", info
    return None


def load_segmentation_dataset(
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
    """A segmentation dataset as splits "train" and "eval", with its `source`, its `id2label` (Cityscapes', the demo
    scenes', or an `id2label.json` in a local folder; else `None`) and, for Cityscapes, its `label_lookup` (labelIds
    -> train ids).

    `name_or_path`: a Hub dataset id (`scene_parse_150`, `segments/sidewalk-semantic`), a local folder saved with
    `save_to_disk`, a local folder of parquet files (`train-*.parquet`, `validation-*.parquet`, ...), a Cityscapes
    folder (`leftImg8bit/` and `gtFine/`), or the embedded demo scenes `fashion-mnist-scenes`.
    """
    dataset, own = load_dense_dataset(
        name_or_path, functools.partial(_read_own, seed=seed), SEGMENTATION_FOLDERS, task="Segmentation",
        config_name=config_name, train_split=train_split, eval_split=eval_split, eval_fraction=eval_fraction,
        seed=seed, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, cache_dir=cache_dir,
        **kwargs,
    )  # fmt: skip
    id2label, lookup = own or (None, None)
    names_file = os.path.join(name_or_path, "id2label.json")
    if id2label is None and os.path.isfile(names_file):  # as transformers' segmentation datasets ship their names
        id2label = read_id2label(names_file)
    dataset.label_lookup, dataset.id2label = lookup, id2label
    return dataset


def detect_segmentation_columns(
    dataset: Dataset | DatasetDict, image_column: str | None = None, mask_column: str | None = None
) -> tuple[str, str]:
    """`(image_column, mask_column)`: both image columns; the mask one named `label`, `annotation`,
    `segmentation_mask`, `semantic_map` (or `--label_column`), the image one the other (or `--image_column`)."""
    part = dataset["train"] if isinstance(dataset, DatasetDict) else dataset
    features = dict(part.features)
    listed = ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items())
    if mask_column is None:
        found = [name for name in MASK_COLUMN_NAMES if name in features]
        if not found:
            raise UsageError(
                f"The dataset has no mask column (one of {', '.join(MASK_COLUMN_NAMES)}); its columns are: {listed}. "
                "Set --label_column to the column of class-id masks."
            )
        mask_column = found[0]
    elif mask_column not in features:
        raise UsageError(f"The dataset has no column {mask_column!r}; its columns are: {listed}. Fix --label_column.")
    if image_column is None:
        images = [n for n, f in features.items() if isinstance(f, Image) and n != mask_column]
        named = [n for n in IMAGE_COLUMN_NAMES if n in features and n != mask_column]
        candidates = images if len(images) == 1 else named[:1] if len(named) == 1 or not images else []
        if len(candidates) != 1:
            raise UsageError(f"No single image column besides the mask {mask_column!r}: {listed}. Set --image_column.")
        image_column = candidates[0]
    elif image_column not in features:
        raise UsageError(f"The dataset has no column {image_column!r}; its columns are: {listed}. Fix --image_column.")
    if isinstance(features[mask_column], Image) is False and not hasattr(features[mask_column], "shape"):
        raise UsageError(
            f"Column {mask_column!r} holds {type(features[mask_column]).__name__} values, not masks: a segmentation "
            "dataset needs one class-id mask image per row (is this an image classification dataset? then drop "
            "--task semantic-segmentation and use a classifier)."
        )
    return image_column, mask_column


def read_id2label(path: str) -> dict[int, str]:
    """`{id: name}` from a JSON file (transformers' `id2label.json`: `{"0": "wall", ...}`) or a JSON string."""
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else path
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(
            f'--id2label must be a JSON file or string such as \'{{"0": "road"}}\', got {path!r}.'
        ) from None
    if isinstance(mapping, list):
        mapping = dict(enumerate(mapping))
    try:
        return {int(key): str(value) for key, value in mapping.items()}
    except (AttributeError, ValueError):
        raise UsageError(f"--id2label must map class ids to names, got {mapping!r}.") from None


def _mask_array(value: Any, lookup: np.ndarray | None) -> np.ndarray:
    array = np.asarray(decode_image(value))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise UsageError(
            f"has shape {array.shape}: a mask holds one class id per pixel (a single-channel image); colour-coded "
            "masks need their palette mapped to class ids first"
        )
    array = array.astype(np.int64)
    return lookup[np.clip(array, 0, len(lookup) - 1)] if lookup is not None else array


def _where(row: Mapping[str, Any], column: str, index: int) -> str:
    value = row.get(column)
    path = value.get("path") if isinstance(value, dict) else getattr(value, "filename", None)
    return f"row {index}" + (f" ({path})" if path else "")


def check_segmentation_rows(
    dataset: Dataset,
    image_column: str,
    mask_column: str,
    num_labels: int,
    *,
    lookup: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
    split: str = "train",
    max_rows: int = 200,
) -> None:
    """Before training: up to `max_rows` rows spread over the split are decoded, and the first image whose mask is
    unreadable, of another size, or holds an id outside `[0, num_labels)` that is not `ignore_index` is named (row and
    file) with the fix. Every row is checked again when it is transformed."""
    if len(dataset) == 0:
        raise UsageError(f"The {split} split has no rows.")
    undecoded = dataset.cast_column(image_column, Image(decode=False)).cast_column(mask_column, Image(decode=False))
    positions = np.unique(np.linspace(0, len(dataset) - 1, num=min(max_rows, len(dataset))).astype(int))
    for index in positions.tolist():
        row = undecoded[index]
        check_pair(row, image_column, mask_column, int(index), num_labels, lookup, ignore_index, split)


def check_pair(
    row: Mapping[str, Any],
    image_column: str,
    mask_column: str,
    index: int,
    num_labels: int,
    lookup: np.ndarray | None,
    ignore_index: int,
    split: str = "train",
) -> tuple[Any, np.ndarray]:
    """(image, mask array) of one row, or a `UsageError` naming the row, its file and the fix."""
    try:
        image = decode_image(row[image_column])
        image.load()
    except Exception as err:  # any decoder error: the row cannot be used
        raise UsageError(f"{split}: the image of {_where(row, image_column, index)} cannot be read ({err}).") from None
    try:
        mask = _mask_array(row[mask_column], lookup)
    except UsageError as err:
        raise UsageError(f"{split}: the mask of {_where(row, mask_column, index)} {err}.") from None
    except Exception as err:
        raise UsageError(
            f"{split}: the mask of {_where(row, mask_column, index)} cannot be read ({err}); fix or drop that row."
        ) from None
    if mask.shape != (image.height, image.width):
        raise UsageError(
            f"{split}: the mask of {_where(row, mask_column, index)} is {mask.shape[1]}x{mask.shape[0]} pixels, its "
            f"image {image.width}x{image.height}: each mask must match its image pixel for pixel (check the pairing "
            "of image and mask files)."
        )
    bad = (mask >= num_labels) & (mask != ignore_index) | (mask < 0)
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})[:8]
        raise UsageError(
            f"{split}: the mask of {_where(row, mask_column, index)} holds class ids {values}, outside [0, "
            f"{num_labels - 1}] and not the ignore index {ignore_index}: give the model {max(values) + 1} labels "
            "(--id2label), use --reduce_labels if 0 means 'unlabelled', or --ignore_index for the value that marks "
            "ignored pixels."
        )
    return image, mask


class SegmentationTransform:
    """The batch transform of segmentation rows (`dataset.set_transform`): each image with its mask cropped together
    (training) or kept whole (evaluation), the student's pixels and each teacher's own normalisation of the same
    crop, `labels` (H, W) and `sample_index`.

    Args:
        image_column, mask_column (`str`): the dataset's columns.
        student (`ImageConfig`): the student's normalisation (mean, std, channels); its size is not used.
        teachers (`Sequence[ImageConfig]`): the teachers' normalisations; a teacher whose mean/std differ from the
            student's gets `teacher_pixel_values[_i]` of the same crop.
        num_labels (`int`): the classes; ids outside them (not `ignore_index`) stop with the row named.
        crop (`CropSettings`, *optional*): training geometry; `None` evaluates (no crop, no flip).
        eval_size (`tuple[int, int]`, *optional*): evaluation only: the size the image is resized to.
        lookup (`np.ndarray`, *optional*): a table applied to every mask value (Cityscapes train ids, reduce_labels).
        seed (`int`): with the epoch and the row's index, the seed of its random draws.
    """

    def __init__(
        self,
        image_column: str,
        mask_column: str,
        student: ImageConfig,
        teachers: Sequence[ImageConfig] = (),
        *,
        num_labels: int,
        crop: CropSettings | None = None,
        eval_size: tuple[int, int] | None = None,
        lookup: np.ndarray | None = None,
        ignore_index: int = IGNORE_INDEX,
        seed: int = 42,
    ) -> None:
        self.image_column, self.mask_column = image_column, mask_column
        self.student, self.num_labels, self.crop, self.eval_size = student, num_labels, crop, eval_size
        self.lookup, self.ignore_index, self.seed, self.epoch = lookup, ignore_index, seed, 0
        # A teacher reads the student's pixels unless its normalisation differs (`hfkd.data.batch.teacher_pixels`).
        self.teachers = {
            member: config
            for member, config in enumerate(teachers)
            if (config.mean, config.std, config.num_channels) != (student.mean, student.std, student.num_channels)
        }

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _one(self, row: Mapping[str, Any], index: int) -> dict[str, torch.Tensor]:
        image, mask = check_pair(
            row, self.image_column, self.mask_column, index, self.num_labels, self.lookup, self.ignore_index,
            "train" if self.crop is not None else "eval",
        )  # fmt: skip
        pixels = image_tensor(image, self.student.num_channels)
        target = mask_tensor(mask)
        padded = None
        if self.crop is not None:
            rng = random.Random(sample_seed(self.seed, self.epoch, index))
            pixels, target, padded = train_crop(pixels, target, self.crop, rng)
        else:
            pixels, target = eval_resize(pixels, self.eval_size), target.as_subclass(torch.Tensor)[0]
        out = {PIXEL_VALUES: normalize(pixels, self.student.mean, self.student.std, padded), LABELS: target}
        for member, config in self.teachers.items():
            teacher = pixels if config.num_channels == self.student.num_channels else pixels[:1].expand(3, -1, -1)
            out[member_key(TEACHER_PIXEL_VALUES, member)] = normalize(teacher, config.mean, config.std, padded)
        return out

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return transform_rows(batch, self._one, self.image_column)


class SegmentationCollator:
    """Stack segmentation samples; images and masks of different sizes (evaluation at full resolution) are padded to
    the largest in the batch at the bottom and right, images with 0 and masks with the ignore index, so that padding
    is never scored."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise UsageError("Empty batch.")
        batch: dict[str, torch.Tensor] = {}
        height = max(int(torch.as_tensor(e[LABELS]).shape[-2]) for e in examples)
        width = max(int(torch.as_tensor(e[LABELS]).shape[-1]) for e in examples)
        for key in examples[0]:
            if key == SAMPLE_INDEX:
                batch[key] = torch.tensor([int(e[key]) for e in examples], dtype=torch.long)
            elif key == LABELS:
                batch[key] = torch.stack(
                    [_pad(torch.as_tensor(e[key]), height, width, self.ignore_index) for e in examples]
                )
            elif key.startswith(PIXEL_VALUES) or key.startswith(TEACHER_PIXEL_VALUES):
                size = (
                    max(int(torch.as_tensor(e[key]).shape[-2]) for e in examples),
                    max(int(torch.as_tensor(e[key]).shape[-1]) for e in examples),
                )
                batch[key] = torch.stack([_pad(torch.as_tensor(e[key]), *size, 0.0) for e in examples])
        return batch


def _pad(tensor: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    pad_h, pad_w = height - tensor.shape[-2], width - tensor.shape[-1]
    if not pad_h and not pad_w:
        return tensor
    return torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h), value=value)
