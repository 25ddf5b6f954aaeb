"""The keys of a distillation batch, defined once: what the collator emits and what the trainer, the teacher and the
student module read.

A batch always has `pixel_values` (the student's view). The teacher reads `teacher_pixel_values` when the data
pipeline gives it its own pixels (another size or normalisation, same crop), else `pixel_values`. Losses that learn
from a second, strongly augmented view (`LossNeeds.strong_view`) get `strong_pixel_values` and, likewise,
`teacher_strong_pixel_values`. `labels` holds class ids (negative: unlabelled), `sample_index` dataset indices, and
`teacher_logits` a teacher cache's outputs for those samples (read by the data loader's workers, not by the step).
In a teacher ensemble, teacher i > 0 reads `teacher_pixel_values_i` (and `teacher_strong_pixel_values_i`) when the
pipeline gives it pixels of its own, else the student's: `member_key` names them.
"""

from __future__ import annotations

import re
from typing import Any

from hfkd.utils.errors import UsageError

PIXEL_VALUES = "pixel_values"


TEACHER_PIXEL_VALUES = "teacher_pixel_values"


STRONG_PIXEL_VALUES = "strong_pixel_values"


TEACHER_STRONG_PIXEL_VALUES = "teacher_strong_pixel_values"


LABELS = "labels"

PIXEL_MASK = "pixel_mask"
"""1 on an image's own pixels, 0 on the padding that batches images of different sizes (detection)."""


SAMPLE_INDEX = "sample_index"
IGNORE_INDEX = 255
"""The label of pixels that no loss or metric counts (transformers' `semantic_loss_ignore_index` default)."""


TEACHER_LOGITS = "teacher_logits"


IMAGE_KEYS = (PIXEL_VALUES, TEACHER_PIXEL_VALUES, STRONG_PIXEL_VALUES, TEACHER_STRONG_PIXEL_VALUES)
"""Image tensors of a batch, stacked by the collator."""


INDEX_KEYS = (LABELS, SAMPLE_INDEX)
"""Integer columns of a batch, collated into long tensors."""


# Student view -> the teacher's own pixels for that view, when the batch has them.
TEACHER_VIEW = {PIXEL_VALUES: TEACHER_PIXEL_VALUES, STRONG_PIXEL_VALUES: TEACHER_STRONG_PIXEL_VALUES}


# Never passed to the student's forward: the teacher's pixels and outputs, the labels (hfkd computes the CE) and the
# indices.
_NOT_STUDENT_INPUTS = frozenset(
    {TEACHER_PIXEL_VALUES, TEACHER_STRONG_PIXEL_VALUES, LABELS, SAMPLE_INDEX, TEACHER_LOGITS}
)


_MEMBER_KEY = re.compile(rf"({TEACHER_PIXEL_VALUES}|{TEACHER_STRONG_PIXEL_VALUES})_[1-9][0-9]*")


def member_key(key: str, member: int) -> str:
    """The batch key of teacher `member`'s own pixels: `key` for the first teacher, `key_i` for teacher i > 0."""
    return key if member == 0 else f"{key}_{member}"


def is_image_key(key: str) -> bool:
    """Whether `key` is an image tensor of a batch (a view, or a teacher's own pixels for one)."""
    return key in IMAGE_KEYS or _MEMBER_KEY.fullmatch(key) is not None


def student_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of `batch` the student module takes: its views and any other model input."""
    return {
        key: value
        for key, value in batch.items()
        if key not in _NOT_STUDENT_INPUTS and _MEMBER_KEY.fullmatch(key) is None
    }


def require_view(batch: dict[str, Any], view: str) -> Any:
    """`batch[view]`, or a ValueError that says how to get that view into the batch."""
    value = batch.get(view)
    if value is not None:
        return value
    if view == STRONG_PIXEL_VALUES:
        raise UsageError(
            "This loss needs a strongly augmented view of each batch (`strong_pixel_values`). "
            "hfkd distill (and examples/run_image_distill.py) adds it for such losses; with your own data, build the "
            "batch transform with hfkd.data.make_transform_fn(..., strong_transforms=(...)) and collate with "
            "DistillationCollator."
        )
    raise UsageError(f"The batch has no {view!r} (keys: {sorted(batch)}).")


def teacher_pixels(batch: dict[str, Any], view: str = PIXEL_VALUES, member: int = 0) -> Any:
    """Teacher `member`'s pixels for a student view: its own when the batch carries them, else the student's."""
    own = batch.get(member_key(TEACHER_VIEW[view], member))
    return require_view(batch, view) if own is None else own
