"""The collator of distillation batches: it stacks the image views and the integer columns a step reads, and nothing
else (`DistillationCollator`); `fast_tensor_columns` casts a dataset's nested-list pixels once to fixed-shape
arrays, so that batching them costs what tensors in memory cost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Array3D, Dataset, LargeList, List, Sequence
from transformers.utils import logging

from hfkd.data.batch import (
    INDEX_KEYS,
    LABELS,
    SAMPLE_INDEX,
    TEACHER_LOGITS,
    is_image_key,
)
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


def _stack(examples: list[dict[str, Any]], key: str) -> torch.Tensor:
    tensors = [torch.as_tensor(example[key]) for example in examples]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise UsageError(f"{key} come in shapes {sorted(shapes)}; transforms must output one size (ImageConfig.size).")
    return torch.stack(tensors)


class DistillationCollator:
    """Stack what a distillation step reads: the image tensors (`pixel_values`, and the teachers' and strong views
    when present), `labels` (or a `label` column, as datasets often name it), `sample_index`, and `teacher_logits`
    (a teacher cache's outputs, `hfkd.teachers.cache.replay`). Every other column (the PIL `image` a `dataset.map`
    kept, file names, ...) is left out of the batch. The trainer's default."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise UsageError("Empty batch: all its images were skipped as unreadable. Run filter_unreadable() first.")
        batch = {}
        for key in examples[0]:
            if is_image_key(key) or key == TEACHER_LOGITS:
                batch[key] = _stack(examples, key)
        for key in INDEX_KEYS:
            source = key if key in examples[0] else "label" if key == LABELS and "label" in examples[0] else None
            if source is not None:
                batch[key] = torch.tensor([int(example[source]) for example in examples], dtype=torch.long)
        return batch


def fast_tensor_columns(dataset: Any) -> Any:
    """Make a `datasets.Dataset` of precomputed pixel tensors as fast to batch as tensors in memory.

    `dataset.map` stores a tensor column (`pixel_values` from an image processor, as the Hugging Face distillation
    guide builds it) as nested lists, and turning 32 such rows into a tensor costs more than a CPU training step of a
    small model. Here such columns are cast once to fixed-shape `Array3D` and the dataset is formatted as torch over
    the columns a step reads (the others, a PIL `image` say, are then not decoded at all). A dataset with a batch
    transform (`set_transform`) or other data is returned as it is.
    """
    if not isinstance(dataset, Dataset) or dataset.format["type"] == "custom":
        return dataset
    keys = [key for key in dataset.column_names if is_image_key(key)]  # every teacher's own pixels too
    if not keys:
        return dataset
    for key in keys:
        if not isinstance(dataset.features[key], (List, Sequence, LargeList)) or len(dataset) == 0:
            continue
        shape = np.asarray(dataset.select_columns([key])[0][key]).shape
        if len(shape) != 3:
            continue
        try:
            dataset = dataset.cast_column(key, Array3D(shape, dtype="float32"))
        except (ValueError, TypeError, pa.ArrowInvalid) as err:  # rows of other shapes: batching will say so
            logger.info(f"{key} kept as lists ({type(err).__name__}: {err}).")
    columns = keys + [c for c in (LABELS, "label", SAMPLE_INDEX, TEACHER_LOGITS) if c in dataset.column_names]
    return dataset.with_format("torch", columns=columns)


def collate_fn(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`DistillationCollator()(examples)`, for `Trainer(data_collator=collate_fn)`."""
    return DistillationCollator()(examples)
