"""Decoding dataset images: a PIL image from whatever a `datasets.Image` column holds, and the pre-pass that drops
the images that fail to decode."""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers.utils import logging

from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


_DECODER = Image()


def decode_image(value: Any) -> PILImage.Image:
    """A PIL image from a decoded or undecoded (`{"bytes", "path"}`) `datasets.Image` value or an array."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict):  # undecoded datasets.Image: {"bytes": ..., "path": ...}
        return _DECODER.decode_example(value)
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return PILImage.fromarray(array if array.dtype == np.uint8 else array.clip(0, 255).astype(np.uint8))


def _readable_flags(images: list[Any]) -> dict[str, list[bool]]:
    flags = []
    for image in images:
        try:
            decode_image(image).load()
            flags.append(True)
        except Exception:
            flags.append(False)
    return {"readable": flags}


def filter_unreadable(dataset: Dataset, image_column: str, num_proc: int | None = None) -> tuple[Dataset, int]:
    """Decode every image once (`num_proc` processes) and drop the ones that fail, logging their indices.

    Returns `(dataset, n_dropped)`: the readable rows (same features) and how many were dropped.
    """
    feature = dataset.features.get(image_column)
    raw = dataset.cast_column(image_column, Image(decode=False)) if isinstance(feature, Image) else dataset
    flags = raw.map(
        _readable_flags,
        batched=True,
        input_columns=[image_column],
        remove_columns=raw.column_names,
        num_proc=num_proc,
        desc="Checking images",
    )["readable"]
    bad = np.flatnonzero(~np.asarray(flags, dtype=bool))
    if bad.size == 0:
        return dataset, 0
    if bad.size == len(dataset):
        raise UsageError(
            f"The dataset has no readable image: all {bad.size} images failed to decode (e.g. index 0). Check the "
            f"--image_column ({image_column!r}) and that the files are images."
        )
    logger.warning(f"Dropping {bad.size} unreadable images at indices {bad[:10].tolist()}{' ...' * (bad.size > 10)}.")
    return dataset.select(np.flatnonzero(np.asarray(flags, dtype=bool))), int(bad.size)
