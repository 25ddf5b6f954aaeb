"""The dataset transform of a distillation run: every model's pixels of one shared random crop per sample.

`make_transform_fn` builds `TransformFn`, which decodes each image once, draws its crop and flip from
(seed, epoch, index) and gives the student its view and each teacher its own pixels of that view (their size and
normalisation), plus a strong view for losses that need one. Unreadable images: `set_image_transform` keeps the
image column undecoded, so the transform decodes each image itself and its `ValueError` names the row (its
`sample_index`, see `add_sample_index`, and its file). To drop such images run the `filter_unreadable` pre-pass: it
is exact, works with any number of dataloader workers and keeps batches full. `make_transform_fn(skip_unreadable=True)`
is only a safety net that drops the row from its batch and counts it in `num_skipped`, a per-process counter.

`transform_rows` is the row loop of the dense tasks' transforms (segmentation, detection): each row of a batch through
a per-row function, the outputs gathered back into columns.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers.utils import logging

from hfkd.data.batch import (
    LABELS,
    PIXEL_VALUES,
    SAMPLE_INDEX,
    STRONG_PIXEL_VALUES,
    TEACHER_PIXEL_VALUES,
    TEACHER_STRONG_PIXEL_VALUES,
    member_key,
)
from hfkd.data.decode import decode_image
from hfkd.data.transforms import (
    ImageTransform,
    sample_seed,
)
from hfkd.data.views import VIEW_INDEX, copy_stream
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


# Random erasing's draws: the row's seed with these bits flipped, one draw shared by the student's and teachers' views.
_ERASING_STREAM = 0x5EED_E2A5E


@contextlib.contextmanager
def _seeded(seed: int | None, host: bool = False) -> Iterator[None]:
    """Run the block on the global CPU RNG seeded with `seed`, restored afterwards; `seed=None` leaves it alone.

    The CPU generator is seeded directly: `torch.manual_seed` also walks every device and costs ~35 times more,
    twice per image. `host` also seeds (and restores) Python's and NumPy's generators, which timm's RandAugment and
    RandomErasing draw from; that costs about 40 times the torch part, so only transforms that use them ask for it.
    """
    if seed is None:
        yield
        return
    generator = torch.default_generator
    states = generator.get_state(), random.getstate() if host else None, np.random.get_state() if host else None
    generator.manual_seed(seed)
    if host:
        random.seed(seed)
        np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        generator.set_state(states[0])
        if host:
            random.setstate(states[1])
            np.random.set_state(states[2])


def _teacher_mode(student: Callable, teacher: Callable | None) -> str:
    """How a teacher's pixels are made from the student's view: "none" (it takes the student's), "renorm" (only
    mean/std differ: one geometric view, normalised twice) or "replay" (its own pipeline on the same random draws)."""
    if teacher is None:
        return "none"
    if not all(isinstance(t, ImageTransform) for t in (student, teacher)):
        return "replay"
    if student.signature(True) != teacher.signature(True):
        return "replay"  # other size, crop, interpolation or channels: same random draws, own pipeline
    return "renorm" if student.signature(False) != teacher.signature(False) else "none"


class TransformFn:
    """The callable that `make_transform_fn` returns; see there. `num_skipped` counts skipped rows (per process).

    With a `seed` and a sample index per row, every random draw of a row (crop box, flip, RandAugment) comes from
    `sample_seed(seed, epoch, index)`: the batches do not depend on the global RNG, the number of dataloader workers
    or where a run was resumed. `set_epoch` (called by the trainer at each epoch) moves to the next epoch's draws.
    A row with a `view_index` (a copy of its image, `hfkd.data.views.expand_views`) goes through `for_copy(copy)`.
    """

    def __init__(
        self,
        student_transform: Callable,
        teacher_transform: Callable | list[Callable | None] | None,
        image_column: str,
        label_column: str | None,
        skip_unreadable: bool,
        index_column: str,
        seed: int | None = None,
        stream: int = 0,
    ) -> None:
        self.student_transform = student_transform
        # One transform per teacher of an ensemble (None: that teacher takes the student's pixels).
        members = teacher_transform if isinstance(teacher_transform, (list, tuple)) else [teacher_transform]
        self.teacher_transforms: list[Callable | None] = list(members)
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column
        self.skip_unreadable = skip_unreadable
        self.seed, self.stream, self.epoch = seed, stream, 0
        self.num_skipped = 0
        self.modes = [_teacher_mode(student_transform, t) for t in self.teacher_transforms]
        own = [t for t in (student_transform, *self.teacher_transforms) if isinstance(t, ImageTransform)]
        # timm's RandAugment and RandomErasing draw from Python's and NumPy's generators: seed those too.
        self.host_rng = any(t.rand_augment or t.random_erasing for t in own)
        self.erasing = any(t.random_erasing for t in own)
        self.strong: TransformFn | None = None
        # Copies 1, 2, ... of each image (`for_copy`): given by make_transform_fn, else made on first use.
        self.copy_transforms: dict[int, TransformFn] = {}

    def _where(self, row: int, image: Any, indices: list | None) -> str:
        where = f"dataset index {indices[row]}" if indices is not None else f"row {row} of the batch"
        path = image.get("path") if isinstance(image, dict) else None
        where += f" (file {path})" if path else ""
        if indices is None:
            where += f"; add_sample_index() adds a {self.index_column!r} column so that errors name the index"
        return where

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.strong is not None:
            self.strong.set_epoch(epoch)
        for copy in self.copy_transforms.values():
            copy.set_epoch(epoch)

    def for_copy(self, copy: int) -> TransformFn:
        """The transform of copy `copy` of each image (copy 0: this one): its own pipelines when `make_transform_fn`
        was given them (`distill_view_augments`), else this one's; either way its random draws come from the copy's
        own stream (`copy_stream`), so the copies of an image are independent draws."""
        copy = int(copy)
        if copy == 0:
            return self
        if copy not in self.copy_transforms:
            strong = self.strong
            self.copy_transforms[copy] = self.restreamed(
                copy, (self.student_transform, self.teacher_transforms),
                None if strong is None else (strong.student_transform, strong.teacher_transforms),
            )  # fmt: skip
        return self.copy_transforms[copy]

    def restreamed(self, copy: int, pipelines: tuple, strong: tuple | None) -> TransformFn:
        """A transform of `pipelines` (student, teachers) for copy `copy`, with a strong view of `strong` when given,
        at this one's seed, epoch and columns."""
        columns = (self.image_column, self.label_column, self.skip_unreadable, self.index_column)
        fn = TransformFn(*pipelines, *columns, seed=self.seed, stream=copy_stream(copy))
        if strong is not None:
            fn.strong = TransformFn(*strong, *columns, seed=self.seed, stream=copy_stream(copy, strong=True))
        fn.set_epoch(self.epoch)
        return fn

    @property
    def random(self) -> bool:
        """Whether the transforms draw anything (evaluation transforms do not: nothing to seed)."""
        transforms = [t for t in (self.student_transform, *self.teacher_transforms) if t is not None]
        return not all(isinstance(t, ImageTransform) and not t.random for t in transforms)

    def _row_seed(self, index: Any) -> int | None:
        if self.seed is None or index is None or not self.random:
            return None
        return sample_seed(self.seed, self.epoch, int(index), self.stream)

    def _views(self, image: PILImage.Image, seed: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The student's view and each teacher's own view of it (None where a teacher takes the student's).

        Random erasing comes last, on each normalised view, from one draw that every view shares (the same box on
        views of one size), as DIST's teacher sees the student's erased tensor."""
        student = self.student_transform
        host = self.host_rng
        if all(mode == "none" for mode in self.modes):
            with _seeded(seed, host):
                return student(image), [None] * len(self.modes)
        if self.random and seed is None and "replay" in self.modes:
            seed = int(torch.randint(0, 2**62, (1,)))  # the same draws for every pipeline that replays them
        own = isinstance(student, ImageTransform)
        with _seeded(seed, host):
            geometric = student.geometry(student.to_mode(image)) if "renorm" in self.modes else None
            if geometric is not None:
                student_view = student.normalize(geometric)
            else:
                student_view = student.view(image) if own else student(image)
        views: list[torch.Tensor | None] = []
        for mode, teacher in zip(self.modes, self.teacher_transforms):
            if mode == "none":
                views.append(None)
            elif mode == "renorm":  # only mean/std differ: the student's geometric view, normalised its way
                views.append(teacher.normalize(geometric))
            else:  # the student's random draws replayed: the same crop box and flip, its own size and pipeline
                with _seeded(seed if self.random else None, host):
                    views.append(teacher.view(image) if isinstance(teacher, ImageTransform) else teacher(image))
        if not self.erasing:
            return student_view, views
        erase_seed = seed ^ _ERASING_STREAM if seed is not None else int(torch.randint(0, 2**62, (1,)))
        if own:
            with _seeded(erase_seed, host=True):
                student_view = student.erase(student_view)
        for i, (view, teacher) in enumerate(zip(views, self.teacher_transforms)):
            if view is not None and isinstance(teacher, ImageTransform):
                with _seeded(erase_seed, host=True):
                    views[i] = teacher.erase(view)
        return student_view, views

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        for column, flag in ((self.image_column, "--image_column"), (self.label_column, "--label_column")):
            if column is not None and column not in batch:
                raise UsageError(f"No column {column!r} in the batch (columns: {list(batch)}). Set {flag}.")
        indices = batch.get(self.index_column)
        copies = batch.get(VIEW_INDEX)
        teacher_keys = [member_key(TEACHER_PIXEL_VALUES, i) for i in range(len(self.modes))]
        strong_keys = [member_key(TEACHER_STRONG_PIXEL_VALUES, i) for i in range(len(self.modes))]
        out: dict[str, list] = {PIXEL_VALUES: [], LABELS: [], SAMPLE_INDEX: []}
        for row, image in enumerate(batch[self.image_column]):
            try:
                decoded = decode_image(image)
            except Exception as err:
                where = self._where(row, image, indices)
                if not self.skip_unreadable:
                    raise UsageError(
                        f"Unreadable image at {where}: {type(err).__name__}: {err}. Fix or remove the file, drop such "
                        "rows with hfkd.data.filter_unreadable(), or set skip_unreadable=True."
                    ) from err
                self.num_skipped += 1
                logger.warning(f"Skipping unreadable image at {where} ({type(err).__name__}: {err}).")
                continue
            index = indices[row] if indices is not None else None
            fn = self.for_copy(copies[row]) if copies is not None else self
            student_view, teacher_views = fn._views(decoded, fn._row_seed(index))
            out[PIXEL_VALUES].append(student_view)
            for key, view in zip(teacher_keys, teacher_views):
                if view is not None:
                    out.setdefault(key, []).append(view)
            if fn.strong is not None:
                strong_student, strong_teachers = fn.strong._views(decoded, fn.strong._row_seed(index))
                out.setdefault(STRONG_PIXEL_VALUES, []).append(strong_student)
                for key, view in zip(strong_keys, strong_teachers):
                    if view is not None:
                        out.setdefault(key, []).append(view)
            out[LABELS].append(batch[self.label_column][row] if self.label_column is not None else None)
            out[SAMPLE_INDEX].append(index)
        for key, absent in ((LABELS, self.label_column is None), (SAMPLE_INDEX, indices is None)):
            if absent:
                del out[key]
        return out


def make_transform_fn(
    student_transform: Callable,
    teacher_transform: Callable | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    *,
    skip_unreadable: bool = False,
    index_column: str = SAMPLE_INDEX,
    strong_transforms: tuple[Callable, Callable | None] | None = None,
    seed: int | None = 0,
    copies: list[tuple[tuple, tuple | None]] | None = None,
) -> TransformFn:
    """A batch transform for `Dataset.set_transform` (use `set_image_transform` to get index-naming errors).

    Args:
        student_transform (`Callable`):
            Usually `build_transforms(student_config, train)`: PIL image -> float tensor.
        teacher_transform (`Callable` or `list`, *optional*):
            The teacher's, or one per teacher of an ensemble. `teacher_pixel_values` (`teacher_pixel_values_i` for
            teacher i > 0) is emitted only when it differs from the student's: with only mean/std different, the
            same view is normalised twice; otherwise the teacher's pipeline runs with the student's random draws
            replayed (same crop box and flip under "rrc").
        image_column (`str`, *optional*, defaults to `"image"`), label_column (`str`, *optional*, defaults to
            `"label"`): input columns; `label_column=None` emits no labels.
        skip_unreadable (`bool`, *optional*, defaults to `False`):
            Drop unreadable images from their batch and count them in `num_skipped` instead of raising a
            `ValueError` that names the index. Prefer the exact `filter_unreadable` pre-pass.
        index_column (`str`, *optional*, defaults to `"sample_index"`):
            Column with dataset indices; when present it names bad rows and is emitted as `sample_index`.
        strong_transforms (`tuple`, *optional*):
            (student, teacher or teachers) transforms of a second, strongly augmented view (MLKD), emitted as
            `strong_pixel_values` and, when a teacher's differs, `teacher_strong_pixel_values[_i]`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the per-sample random draws: each row's augmentation comes from (seed, epoch, its index), so
            batches are the same whatever the dataloader workers and after a resume (the trainer advances the
            epoch through `set_epoch`). `None` draws from the global RNG instead; rows without an index do too.
        copies (`list`, *optional*):
            Copies 1, 2, ... of each image per epoch (`distill_views_per_image`, `hfkd.data.views`): for each, its
            (student, teacher or teachers) pipelines and its strong view's (or None), e.g. StreamLined's FixMatch
            copy. Rows with a `view_index` column go through their copy's; a copy not listed takes copy 0's pipelines.
            Each copy draws from its own seed stream, the same copy 0 of a run without copies draws from.

    Returns:
        `TransformFn`: maps a batch to `pixel_values`, [`teacher_pixel_values`], `labels`, [`sample_index`],
        [`strong_pixel_values`, `teacher_strong_pixel_values`].
    """
    columns = (image_column, label_column, skip_unreadable, index_column)
    fn = TransformFn(student_transform, teacher_transform, *columns, seed=seed)
    if strong_transforms is not None:
        # Its own stream of draws: the strong view is not the weak view's crop with RandAugment on top.
        fn.strong = TransformFn(*strong_transforms, *columns, seed=seed, stream=copy_stream(0, strong=True))
    for number, (pipelines, strong) in enumerate(copies or (), start=1):
        fn.copy_transforms[number] = fn.restreamed(number, pipelines, strong)
    return fn


def transform_rows(
    batch: dict[str, list[Any]], one: Callable[[dict[str, Any], int], dict[str, Any]], count_column: str
) -> dict[str, list[Any]]:
    """`batch` (columns of lists, as `Dataset.set_transform` gives it) row by row through `one(row, index)`, its
    outputs gathered back into lists; `sample_index` is passed on when the batch has it.

    A row's index is its `sample_index` (the seed of its random draws and the name of a bad row) or, without that
    column, its position in the batch. `count_column` is a column every row has, which counts the rows.
    """
    count = len(batch[count_column])
    indices = batch.get(SAMPLE_INDEX) or list(range(count))
    rows = [{key: values[i] for key, values in batch.items()} for i in range(count)]
    outputs = [one(row, int(index)) for row, index in zip(rows, indices)]
    result = {key: [o[key] for o in outputs] for key in outputs[0]}
    if SAMPLE_INDEX in batch:
        result[SAMPLE_INDEX] = list(batch[SAMPLE_INDEX])
    return result


def set_image_transform(dataset: Dataset, transform_fn: TransformFn) -> Dataset:
    """Leave the image column undecoded (the transform decodes it, naming bad rows) and `set_transform`."""
    feature = dataset.features.get(transform_fn.image_column)
    if isinstance(feature, Image) and feature.decode:
        dataset = dataset.cast_column(transform_fn.image_column, Image(mode=feature.mode, decode=False))
    dataset.set_transform(transform_fn)
    return dataset
