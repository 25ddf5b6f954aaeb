"""A cached teacher: outputs read from a teacher cache (`hfkd.teachers.cache`) by sample index and epoch; the model
never runs. A cache stores logits, so it serves logit losses only (`LossNeeds.beyond_logits`).

The data loader's workers read the rows (`ReplayTransform` puts them in each batch as `teacher_logits`), so that the
training step does no disk read and reads nothing back from the device."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

from hfkd.data.batch import SAMPLE_INDEX, TEACHER_LOGITS
from hfkd.losses import LossNeeds
from hfkd.teachers.base import Teacher, TeacherOutputs
from hfkd.teachers.cache.store import TeacherCache
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import neutral_name

logger = logging.get_logger(__name__)


class CachedTeacher(Teacher):
    """Teacher logits read from a cache built by `python -m hfkd.teacher_cache`: the teacher never runs.

    The batch carries the cached logits of its samples in the current epoch as `teacher_logits`, and the student's
    pixels are the cached views of those samples (`hfkd.teachers.cache.replay.ReplayTransform` gives both, in the data
    loader's workers). A batch from a pipeline of one's own may carry `sample_index` instead: the rows are then read
    here, in the training step, which costs a disk read and a wait for the device at every step. A cache stores logits
    only.
    """

    def __init__(self, cache: TeacherCache | str, device: torch.device | str = "cpu") -> None:
        self.cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        self.device = device

    @classmethod
    def unsupported(cls, needs: LossNeeds) -> list[str]:
        return needs.beyond_logits()

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        logits = batch.get(TEACHER_LOGITS)
        if logits is None:
            logits = self._read_in_step(batch, epoch)
        return TeacherOutputs(ImageClassifierOutput(logits=logits.to(self.device, non_blocking=True)))

    def _read_in_step(self, batch: dict[str, Any], epoch: float) -> torch.Tensor:
        index = batch.get(SAMPLE_INDEX)
        if index is None:
            raise UsageError(
                "Training from a teacher cache needs `teacher_logits` (ReplayTransform) or `sample_index` "
                "(add_sample_index) in each batch."
            )
        logger.warning_once(
            "The batches carry no `teacher_logits`: the teacher cache is read in each training step (a disk read and "
            "a wait for the device). hfkd.teachers.cache.replay.ReplayTransform reads it in the data loader instead."
        )
        return self.cache.teacher_logits(math.floor(epoch), index.cpu())

    def batch_keys(self) -> tuple[str, ...]:
        return (TEACHER_LOGITS, SAMPLE_INDEX)

    def check_dataset(self, dataset: Any) -> None:
        size = self.cache.config.num_samples
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != size:
            raise UsageError(
                f"The teacher cache {neutral_name(self.cache.path)!r} holds views of {size} training images, the "
                f"training set has {len(dataset)}: a cache serves only the training set it was built on."
            )

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        raise UsageError(
            f"The teacher cache {self.cache.path!r} holds the teacher's outputs on training views only; evaluating "
            "the teacher needs the teacher itself (pass --teacher, or --evaluate_teacher false)."
        )

    @property
    def config(self) -> Any:
        return None

    @property
    def num_labels(self) -> int:
        return self.cache.config.num_classes

    @property
    def id2label(self) -> None:
        return None

    def record(self) -> dict[str, Any]:
        config = self.cache.config
        record = {
            "name_or_path": neutral_name(config.teacher),
            "cache": neutral_name(self.cache.path),
            "top_k": config.top_k,
            "num_labels": config.num_classes,
        }
        if config.ensemble is not None:  # a cache of an ensemble's outputs: its members and how they combined
            record.update(ensemble=config.ensemble, members=config.members)
        return record
