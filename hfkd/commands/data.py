"""The data steps of `hfkd distill`: which rows, from where, prepared how.

`ImageClassificationData` is the one builder a run gets its data from, in two steps: `load` (through `load_data`)
reads the train and eval splits (a teacher cache's recorded rows when there is one, synthetic images in smoke mode),
and `splits` (through `prepare_splits`) gives each its batch transform: the student's and the teacher's
preprocessing on one shared random crop per sample (from (seed, epoch, index)), or the cached views of a teacher
cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
from transformers.utils import logging

from hfkd.commands.arguments import DataArguments, RunArguments
from hfkd.commands.smoke import synthetic_dataset
from hfkd.data.batch_transform import make_transform_fn, set_image_transform
from hfkd.data.datasets import (
    add_sample_index,
    check_labels,
    class_names,
    detect_columns,
    keep_labelled_subset,
    load_image_dataset,
)
from hfkd.data.decode import filter_unreadable
from hfkd.data.demo import card_dataset_name
from hfkd.data.saved_preprocessing import record_image_config
from hfkd.data.streaming import load_streaming_dataset, set_stream_transform
from hfkd.data.transforms import ImageConfig, build_transforms, image_config_for_model
from hfkd.losses import get_loss_class
from hfkd.teachers.build import ensemble_temperature
from hfkd.teachers.cache.check import cache_summary, check_cache_matches
from hfkd.teachers.cache.replay import ReplayTransform
from hfkd.teachers.cached import CachedTeacher
from hfkd.training.arguments import DistillationArguments
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import neutral_name, neutral_text

logger = logging.get_logger(__name__)


@dataclass
class RunData:
    """The loaded data of a run: splits (still raw images), columns, class names and where it came from."""

    splits: datasets.DatasetDict
    image_column: str
    label_column: str
    names: list[str]
    source: str

    def info(self, data_args: DataArguments) -> dict[str, Any]:
        """What `distill_config.json` records about the data."""
        return {
            "dataset": neutral_name(card_dataset_name(data_args.dataset, self.source)),
            "config": data_args.dataset_config,
            "source": neutral_text(self.source, data_args.dataset),
            # A stream's length is not known (`None`).
            "train_images": len(self.splits["train"]) if hasattr(self.splits["train"], "__len__") else None,
            "eval_images": len(self.splits["eval"]) if hasattr(self.splits["eval"], "__len__") else None,
            "streamed": data_args.streaming or None,
            "labelled_images": data_args.labelled_samples,
            "image_column": self.image_column,
            "label_column": self.label_column,
        }


def data_dirs(data_args: DataArguments) -> dict[str, str] | None:
    """transformers' `--train_dir` / `--validation_dir`: one image folder per split."""
    if data_args.train_dir is None and data_args.validation_dir is None:
        return None
    if data_args.train_dir is None:
        raise UsageError("--validation_dir needs --train_dir (the training images' folder).")
    folders = {"train": data_args.train_dir}
    if data_args.validation_dir is not None:
        folders["validation"] = data_args.validation_dir
    return folders


def load_data(
    data_args: DataArguments,
    run_args: RunArguments,
    args: DistillationArguments,
    *,
    distilling: bool,
    cache_dir: str | None = None,
    rows: dict[str, Any] | None = None,
) -> RunData:
    """The train and eval splits with their columns and class names (synthetic data in smoke mode); `rows`, a
    teacher cache's selection, replaces the seeded one. Without a teacher (`distilling=False`) the images that
    `--labelled_samples` leaves unlabelled are dropped."""
    if data_args.streaming:
        return _load_stream(data_args, args, distilling=distilling, cache_dir=cache_dir)
    dataset = _load_splits(data_args, run_args, args, cache_dir=cache_dir, rows=rows)
    image_column, label_column = detect_columns(dataset["train"], data_args.image_column, data_args.label_column)
    names = class_names(dataset["train"], label_column)
    check_labels(dataset, label_column, len(names))
    source = getattr(dataset, "source", data_args.dataset)
    logger.info(
        f"Data: {source}; {len(names)} classes; {len(dataset['train'])} train / {len(dataset['eval'])} eval images"
    )
    if data_args.labelled_samples is not None:
        dataset["train"] = keep_labelled_subset(
            dataset["train"], label_column, data_args.labelled_samples, seed=args.seed, drop_unlabelled=not distilling
        )
        rest = "; the teacher supervises the rest" if distilling else "; the rest are dropped (no teacher)"
        logger.info(f"Labels kept for {data_args.labelled_samples} of the training images{rest}")
    return RunData(dataset, image_column, label_column, names, source)


def _load_stream(
    data_args: DataArguments, args: DistillationArguments, *, distilling: bool, cache_dir: str | None
) -> RunData:
    """`--streaming`: this process's shards of both splits, read as they are iterated."""
    streamed = load_streaming_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        train_split=data_args.train_split,
        eval_split=data_args.eval_split,
        data_dirs=data_dirs(data_args),
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        rank=args.process_index,
        world_size=args.world_size,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        drop_unlabelled=not distilling,
        cache_dir=cache_dir,
    )
    return RunData(streamed.splits, streamed.image_column, streamed.label_column, streamed.names, streamed.source)


def _load_splits(
    data_args: DataArguments,
    run_args: RunArguments,
    args: DistillationArguments,
    *,
    cache_dir: str | None,
    rows: dict[str, Any] | None,
) -> datasets.DatasetDict:
    """The map-style train and eval splits (`--smoke`: synthetic images of the dataset's shape)."""
    if run_args.smoke:
        return synthetic_dataset(
            data_args.dataset,
            data_args.label_column,
            image_size=run_args.smoke_image_size,
            num_labels=run_args.smoke_num_labels,
        )
    return load_image_dataset(
        data_args.dataset,
        config_name=data_args.dataset_config,
        train_split=data_args.train_split,
        eval_split=data_args.eval_split,
        seed=args.seed,
        cache_dir=cache_dir,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        rows=rows,
        data_dirs=data_dirs(data_args),
    )


def sized(config: ImageConfig, side: int | None, model: Any) -> ImageConfig:
    """`config` at `side` x `side` pixels when asked (a model whose config fixes its input size keeps it)."""
    if side is None or config.size == (side, side):
        return config
    fixed = getattr(getattr(model, "config", None), "image_size", None)
    if fixed is not None and fixed != side:
        raise UsageError(
            f"{type(model).__name__} takes {fixed} px images (config.image_size); --image_size {side} cannot change "
            "that. Drop the flag for this model, or use one without a fixed input size."
        )
    return dataclasses.replace(config, size=(side, side), resize_size=None)


def check_teachers_take(teachers: list[Any], config: ImageConfig) -> None:
    """With `--teacher_input student`, a teacher whose config fixes its input size (ViT, Swin) must match the
    student's."""
    for teacher in teachers:
        fixed = getattr(getattr(teacher, "config", None), "image_size", None)
        if fixed is not None and tuple(fixed if isinstance(fixed, (list, tuple)) else (fixed, fixed)) != config.size:
            raise UsageError(
                f"--teacher_input student: {type(teacher).__name__} takes {fixed} px images (config.image_size) and "
                f"the student's tensor is {config.size[0]}x{config.size[1]}. Drop --teacher_input, or set "
                f"--image_size {fixed}."
            )


def model_image_configs(
    data_args: DataArguments, models: tuple[Any, Any, list[Any], list[Any]]
) -> tuple[ImageConfig, list[ImageConfig]]:
    """The student's image settings (its own, with --image_size, --interpolation, --image_mean and --image_std;
    recorded in what is saved, so the saved student says how it was trained) and each teacher's (of an ensemble:
    each member's), logged."""
    student, student_processor, teachers, teacher_processors = models
    student_config = sized(image_config_for_model(student, student_processor), data_args.image_size, student)
    overrides = {"interpolation": data_args.interpolation, "mean": data_args.image_mean, "std": data_args.image_std}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides:
        student_config = dataclasses.replace(student_config, **overrides)
    record_image_config(student, student_processor, student_config)
    teacher_configs = [
        sized(image_config_for_model(teacher, processor), data_args.teacher_image_size, teacher)
        for teacher, processor in zip(teachers, teacher_processors)
    ]
    sizes = f"student {student_config.size[0]}x{student_config.size[1]}"
    sizes += "".join(f", teacher {c.size[0]}x{c.size[1]}" for c in teacher_configs)
    shared = teacher_configs and data_args.teacher_input == "student"
    if shared:
        check_teachers_take(teachers, student_config)
    logger.info(
        f"Input sizes: {sizes} (--image_size / --teacher_image_size set them); student resampling "
        f"{student_config.interpolation}, mean {student_config.mean}, std {student_config.std}."
        + (" In training the teachers take the student's tensor (--teacher_input student)." if shared else "")
    )
    return student_config, teacher_configs


def image_transform(
    data_args: DataArguments, config: ImageConfig, *, train: bool, strong: bool = False, augment: str | None = None
) -> Any:
    """One model's preprocessing, PIL image -> normalised tensor, as the flags ask (`--train_augment`,
    `--rand_augment`, `--random_erasing`); `strong`: MLKD's strongly augmented view; `augment`: a copy's own
    `--train_augment` (`--view_augments`)."""
    return build_transforms(
        config, train=train, train_augment=augment or data_args.train_augment, strong=strong,
        rand_augment=data_args.rand_augment, random_erasing=data_args.random_erasing,
    )  # fmt: skip


def prepare_splits(
    data: RunData,
    data_args: DataArguments,
    args: DistillationArguments,
    models: tuple[Any, Any, list[Any], list[Any]],
    cache: CachedTeacher | None,
    *,
    transform: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Both splits with their batch transforms (and, for a teacher cache, the replayed cached views). Each sample's
    random augmentation comes from (seed, epoch, its index), so that resumed runs and any number of workers agree.

    `transform(config, train=..., strong=...)` builds one model's pipeline (default: `image_transform` with the
    flags; with `--view_augments`, also `augment=` a copy's augment); the teachers' pipelines replay the student's
    random draws, so every model sees the same crop. Copies of each training image (`--views_per_image`) draw each
    on its own."""
    student_config, teacher_configs = model_image_configs(data_args, models)
    transform = transform or functools.partial(image_transform, data_args)

    def pipelines(train: bool, strong: bool = False, augment: str | None = None) -> tuple[Any, Any]:
        # Only a copy's own augment is passed on, so that a `transform` without `augment` serves runs without copies.
        kwargs = {} if augment is None else {"augment": augment}
        student = transform(student_config, train=train, strong=strong, **kwargs)
        if train and data_args.teacher_input == "student":
            return student, None  # the teachers read the student's tensor (`pixel_values`)
        return student, [transform(config, train=train, strong=strong, **kwargs) for config in teacher_configs] or None

    # Losses such as MLKD learn from a second, strongly augmented (RandAugment) view of each training image.
    strong_view = bool(models[2]) and get_loss_class(args.distill_loss).needs.strong_view
    # Copy c of each image takes --view_augments' c-th augment (by default the run's: copy 0's pipelines).
    augments = args.distill_view_augments or [None]
    splits = {}
    for split, train in (("train", True), ("eval", False)):
        copy_augments = augments if train else [None]
        per_copy = [
            (pipelines(train, augment=name), pipelines(train, strong=True, augment=name) if train and strong_view
             else None) for name in copy_augments
        ]  # fmt: skip
        transform_fn = make_transform_fn(
            *per_copy[0][0],
            data.image_column,
            data.label_column,
            # A stream cannot be filtered beforehand: its transform drops unreadable images as it reads them.
            skip_unreadable=data_args.skip_unreadable and data_args.streaming,
            strong_transforms=per_copy[0][1],
            seed=args.data_seed if args.data_seed is not None else args.seed,
            copies=per_copy[1:],
        )
        if data_args.streaming:
            part = data.splits[split]
            splits[split] = set_stream_transform(part, transform_fn, num_labels=len(data.names), train=train)
        else:
            replay = _replayed_views(cache, student_config, data) if train and cache is not None else None
            splits[split] = _transformed_split(data, split, replay or transform_fn, data_args.skip_unreadable)
    return splits


def _replayed_views(cache: CachedTeacher, config: ImageConfig, data: RunData) -> ReplayTransform:
    """Offline distillation: the student sees exactly the crops the teacher saw when the cache was built."""
    return ReplayTransform(
        cache.cache, config.size, config.mean, config.std, data.image_column, data.label_column,
        config.num_channels, config.interpolation,
    )  # fmt: skip


def _transformed_split(data: RunData, split: str, transform_fn: Any, skip_unreadable: bool) -> Any:
    """A map-style split with its transform: unreadable images filtered out first (when asked), a sample index per
    row (it seeds each row's augmentation and names a bad row in errors)."""
    part = data.splits[split]
    if skip_unreadable:
        part, skipped = filter_unreadable(part, data.image_column)
        logger.info(f"{split}: skipped {skipped} unreadable images")
    return set_image_transform(add_sample_index(part), transform_fn)


class ImageClassificationData:
    """The data of a run and its preprocessing: one builder, used in two steps around the models.

    `load()` reads the train and eval splits (raw images, their columns and class names) before the models load,
    since the student's head is sized to the class names; `splits(data, models)` then gives each split its batch
    transform: each model's own preprocessing of one shared random crop per sample, or the cached views of a teacher
    cache. `hfkd distill` and `examples/run_image_distill.py` build their data with it.

    To preprocess images otherwise, subclass it and override `transform` (one model's pipeline, PIL image -> tensor;
    the teachers' replay the student's random draws); to read other data, override `load` (a `RunData` whose splits
    hold raw images). Then build yours where the run builds this one.

    Args:
        data_args, run_args, args: the run's parsed arguments.
        cache (`CachedTeacher`, *optional*): the run's teacher cache; its recorded rows select the data, and its
            stored views replace the training transform.
        cache_dir (`str`, *optional*): where `datasets` caches what it downloads.
    """

    def __init__(
        self,
        data_args: DataArguments,
        run_args: RunArguments,
        args: DistillationArguments,
        cache: CachedTeacher | None = None,
        *,
        cache_dir: str | None = None,
    ) -> None:
        self.data_args, self.run_args, self.args = data_args, run_args, args
        self.cache, self.cache_dir = cache, cache_dir

    def load(self) -> RunData:
        """The raw splits, their columns and class names; a teacher cache's rows, checked against the cache."""
        data = load_data(
            self.data_args,
            self.run_args,
            self.args,
            distilling=self.args.uses_teacher,
            cache_dir=self.cache_dir,
            rows=cache_rows(self.cache),
        )
        if self.cache is not None:
            check_cache(self.cache, data, self.data_args, self.args)
        return data

    def transform(self, config: ImageConfig, *, train: bool, strong: bool = False, augment: str | None = None) -> Any:
        """One model's pipeline: PIL image -> normalised tensor of `config`'s size, mean and std (`augment`: a copy's
        own `--train_augment`, with `--view_augments`)."""
        return image_transform(self.data_args, config, train=train, strong=strong, augment=augment)

    def splits(self, data: RunData, models: tuple[Any, Any, list[Any], list[Any]]) -> dict[str, Any]:
        """`{"train": ..., "eval": ...}`, each with its batch transform, for the trainer."""
        return prepare_splits(data, self.data_args, self.args, models, self.cache, transform=self.transform)


def cache_rows(cache: CachedTeacher | None) -> dict[str, Any] | None:
    """A teacher cache's selection of the training rows, as `load_image_dataset(rows=...)` takes it."""
    selection = cache.cache.selection() if cache is not None else None
    if selection is None:
        return None
    data = cache.cache.config.data
    return {
        "train_split": data["train_split"],
        "train": selection["train_rows"],
        "eval_split": data["eval_split"],
        "eval": selection["eval_rows"],
    }


def check_cache(cache: CachedTeacher, data: RunData, data_args: DataArguments, args: DistillationArguments) -> None:
    """The cache must have been built from this run's data (and from its --teacher, when one is named)."""
    check_cache_matches(
        cache.cache.config,
        dataset=data_args.dataset,
        dataset_config=data_args.dataset_config,
        train_split=data_args.train_split,
        max_train_samples=data_args.max_train_samples,
        train=data.splits["train"],
        image_column=data.image_column,
        label_column=data.label_column,
        teacher=args.teacher_model_name_or_path,
        teacher_revision=args.teacher_model_revision,
        # An ensemble's combination, where this run names one (the temperature only when given: caches default to 1).
        teacher_weights=args.teacher_weights,
        teacher_ensemble=args.teacher_ensemble if len(args.teacher_names) > 1 else None,
        teacher_ensemble_temperature=args.teacher_ensemble_temperature,
    )
    logger.info(f"Teacher cache: {cache_summary(cache.cache.config)}; it matches this run's data.")
    ensemble = cache.cache.config.ensemble
    if ensemble is not None and ensemble["mode"] == "probs" and args.teacher_ensemble_temperature is None:
        # Unset, the temperature is the loss's, as with live teachers; a cache, built without a loss, used 1 then.
        wanted = ensemble_temperature(args)
        if wanted != ensemble["temperature"]:
            logger.warning(
                f"The teacher cache averaged its teachers' distributions at temperature {ensemble['temperature']:g} "
                f"and this run's loss works at {wanted:g}: live teachers would be averaged at {wanted:g}. For the "
                f"same targets, rebuild the cache with --teacher_ensemble_temperature {wanted:g}."
            )


def dense_class_names(
    data_args: DataArguments, dataset: Any, fallback: dict[int, str] | None, example: str
) -> dict[int, str]:
    """A dense task's class names: `--id2label`, else the dataset's, else `fallback` (the teacher's); refused when
    none names them (`example`: an --id2label value for the task) or when they leave gaps."""
    from hfkd.tasks.segmentation.data import read_id2label

    id2label = read_id2label(data_args.id2label) if data_args.id2label is not None else None
    id2label = id2label or dataset.id2label or fallback
    if not id2label:
        raise UsageError(f"{dataset.source} does not name its classes: pass --id2label (a JSON file or string such as "
                         f"{example}).")  # fmt: skip
    if sorted(id2label) != list(range(len(id2label))):
        raise UsageError(f"--id2label must name classes 0..N-1 without gaps, got ids {sorted(id2label)[:10]}.")
    return id2label


def dense_image_configs(
    models: tuple[Any, Any, list[Any], list[Any]], data_args: DataArguments
) -> tuple[ImageConfig, list[ImageConfig]]:
    """A dense task's image settings: the student's normalisation (its processor's, `--image_mean` / `--image_std`
    winning) and each teacher's."""
    student, student_processor, teachers, teacher_processors = models
    student_config = image_config_for_model(student, student_processor)
    overrides = {"mean": data_args.image_mean, "std": data_args.image_std}
    student_config = dataclasses.replace(student_config, **{k: v for k, v in overrides.items() if v is not None})
    return student_config, [image_config_for_model(t, p) for t, p in zip(teachers, teacher_processors)]


def transformed_splits(data: RunData, transform: Callable[..., Any]) -> dict[str, Any]:
    """`{"train": ..., "eval": ...}`: each split numbered (`sample_index`) with `transform(train=...)` set on it."""
    splits = {}
    for split, train in (("train", True), ("eval", False)):
        part = add_sample_index(data.splits[split])
        part.set_transform(transform(train=train))
        splits[split] = part
    return splits


def dense_splits(
    data_args: DataArguments, run_args: RunArguments, seed: int, cache_dir: str | None, *, synthetic: Callable,
    load: Callable,
) -> Any:  # fmt: skip
    """A dense task's raw splits: `synthetic(...)` smoke data (`--smoke`), else `load(...)` the dataset of the run
    (`load_segmentation_dataset`, `load_detection_dataset`) with its split and subset arguments."""
    if run_args.smoke:
        return synthetic(data_args.dataset, image_size=run_args.smoke_image_size, num_labels=run_args.smoke_num_labels)
    return load(
        data_args.dataset, config_name=data_args.dataset_config, train_split=data_args.train_split,
        eval_split=data_args.eval_split, seed=seed, max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples, cache_dir=cache_dir,
    )  # fmt: skip
