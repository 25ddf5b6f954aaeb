"""Replaying a teacher cache: `ReplayTransform` gives the student, for each (epoch, sample), exactly the crop and flip
the cache's teacher saw, and the teacher's cached outputs on that view, so that they belong to the student's view and
are read in the data loader's workers rather than in the training step."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF

from hfkd.data.batch import SAMPLE_INDEX, TEACHER_LOGITS
from hfkd.data.decode import decode_image
from hfkd.teachers.cache.store import (
    TeacherCache,
    apply_view,
)
from hfkd.utils.errors import UsageError


class ReplayTransform:
    """`Dataset.set_transform` function that gives the student the cached view of each image in the current epoch,
    and the teacher's logits on it (`teacher_logits`, what `CachedTeacher` serves the loss).

    The batch needs a `sample_index` column (`hfkd.data.add_sample_index`); the trainer calls `set_epoch` at the start
    of every epoch. The student's own size, resampling and normalisation apply to the same crop box and flip the
    teacher saw.
    """

    def __init__(
        self,
        cache: TeacherCache,
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_column: str,
        label_column: str | None,
        num_channels: int = 3,
        interpolation: str = "bilinear",
    ) -> None:
        self.cache, self.image_column, self.label_column = cache, image_column, label_column
        self.interpolation = interpolation
        self.size, self.mean, self.std = tuple(size), tuple(mean), tuple(std)
        self.mode = "L" if num_channels == 1 else "RGB"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "sample_index" not in batch:
            raise UsageError("Replaying cached views needs a `sample_index` column: use hfkd.data.add_sample_index.")
        out: dict[str, list] = {"pixel_values": [], "sample_index": list(batch["sample_index"])}
        for image, index in zip(batch[self.image_column], batch["sample_index"]):
            image = decode_image(image)
            tensor = TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))
            box, flip = self.cache.view(self.epoch, int(index))
            view = apply_view(tensor, box, flip, self.size, self.mean, self.std, self.interpolation)
            out["pixel_values"].append(view)
        indices = torch.tensor([int(i) for i in out[SAMPLE_INDEX]], dtype=torch.long)
        out[TEACHER_LOGITS] = list(self.cache.teacher_logits(self.epoch, indices))
        if self.label_column is not None:
            out["labels"] = list(batch[self.label_column])
        return out


class _DecodedImages:
    """A dataset's images as uint8 (C, H, W) tensors, decoded on access."""

    def __init__(self, dataset: Any, column: str, mode: str) -> None:
        self.dataset, self.column, self.mode = dataset, column, mode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = decode_image(self.dataset[index][self.column])
        return TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))
