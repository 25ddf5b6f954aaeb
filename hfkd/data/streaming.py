"""Streamed data for ImageNet-scale runs: `datasets.IterableDataset` splits, read shard by shard, never stored.

`load_streaming_dataset` opens the splits (Hub id or local data) and gives each process its own shuffled part of the
training split (`split_dataset_by_node`); `set_stream_transform` applies the map-style batch transform
(`hfkd.data.TransformFn`); `hfkd.streaming_trainer.StreamingMixin`, a base of `DistillationTrainer`, reads each
process's part itself; `check_streaming_arguments` refuses what needs a dataset length.

Evaluation streams too, whole on every process: the Trainer gathers each evaluation batch across processes, which
hangs when processes hold different numbers of batches (as parts of a stream do), while Accelerate's default for
iterable data (the main process reads it and dispatches slices of each batch) pads the last batch and
`gather_for_metrics` drops the padding: every evaluation image counts exactly once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import ClassLabel, Image, IterableDataset, IterableDatasetDict, load_dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image as PILImage
from transformers.utils import logging

from hfkd.data.batch import SAMPLE_INDEX
from hfkd.data.datasets import (
    EVAL_SPLIT_NAMES,
    HUB_DATASET_ALIASES,
    check_imagefolder_layout,
    detect_columns,
    imagefolder_files,
)
from hfkd.data.demo import DEMO_DATASETS
from hfkd.losses import get_loss_class
from hfkd.utils.errors import UsageError

if TYPE_CHECKING:
    from hfkd.data.batch_transform import TransformFn
    from hfkd.training.arguments import DistillationArguments

logger = logging.get_logger(__name__)


TRANSFORM_BATCH = 16
"""Rows per call of the batch transform on a stream (the dataloader batches the transformed rows)."""


_PROCESS = "_hfkd_process"  # (rank, world_size) of a training stream's part, set by load_streaming_dataset


_STREAM = "_hfkd_stream"  # (rank, world_size, transform) of a transformed training stream, for StreamingMixin


@dataclass
class StreamingData:
    """The fields of `hfkd.run_data.RunData`: `splits["train"]` is this process's shuffled part of the training
    split, `splits["eval"]` the whole evaluation split; raw rows, images undecoded (`{"bytes", "path"}`)."""

    splits: IterableDatasetDict
    image_column: str
    label_column: str
    names: list[str]
    source: str


def load_streaming_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    data_dirs: dict[str, str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 42,
    shuffle_buffer_size: int = 1000,
    drop_unlabelled: bool = False,
    cache_dir: str | None = None,
    **kwargs: Any,
) -> StreamingData:
    """This process's shuffled part of a streamed training split, and the whole evaluation split.

    Args:
        name_or_path (`str`): a Hub dataset id (aliases as in `load_image_dataset`), or a local folder of data files
            (parquet, arrow, json: one shard per file) or an image folder (`<dir>/<split>/<class>/<image>`: one shard).
        config_name, train_split, data_dirs, image_column, label_column: as in `load_image_dataset` and
            `detect_columns` (columns are found from the stream's declared features).
        eval_split (`str`, *optional*): defaults to the first of "validation", "val", "valid", "test"; a stream
            cannot hold out part of its training split (that needs its length), so without one this raises.
        rank (`int`, defaults to `0`), world_size (`int`, defaults to `1`): `args.process_index`, `args.world_size`.
            Each process gets whole shards when they number a multiple of `world_size` or at least 10 per process;
            otherwise each reads the whole stream and keeps every `world_size`-th row.
        seed (`int`, defaults to `42`), shuffle_buffer_size (`int`, defaults to `1000`): the shard order and the
            buffer of raw rows (encoded images), the same on every process; each pass (`set_epoch`) reshuffles both.
        drop_unlabelled (`bool`, defaults to `False`): drop training rows labelled -1 (runs without a teacher);
            otherwise the teacher alone supervises them.
        cache_dir (`str`, *optional*), kwargs: forwarded to `datasets.load_dataset` (`revision`, `token`, ...).
    """
    if shuffle_buffer_size < 1:
        raise UsageError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}; 1000 is a usual value.")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is not a process of world_size {world_size}.")
    raw, source = _open_streams(name_or_path, config_name, data_dirs, cache_dir, kwargs)
    train, evaluation = _pick_splits(raw, source, train_split, eval_split)
    if train.features is None:
        raise UsageError(
            f"{source} declares no features, so its image and label columns cannot be found before reading it. "
            "Stream data whose features are known (parquet, an image folder, a Hub dataset with dataset_info)."
        )
    image_column, label_column = detect_columns(train, image_column, label_column)
    names = _class_names(train, evaluation, label_column)
    train, evaluation = _undecoded(train, image_column), _undecoded(evaluation, image_column)
    if drop_unlabelled:
        train = train.filter(_is_labelled, input_columns=[label_column])
    train = _split_for_process(train.shuffle(seed=seed, buffer_size=shuffle_buffer_size), rank, world_size)
    logger.info(f"Streaming {source}: {len(names)} classes; process {rank} of {world_size} reads its part of train.")
    return StreamingData(IterableDatasetDict({"train": train, "eval": evaluation}), image_column, label_column, names,
                         source)  # fmt: skip


def _open_streams(
    name: str, config: str | None, data_dirs: dict[str, str] | None, cache_dir: Any, kwargs: dict
) -> tuple[IterableDatasetDict, str]:
    if data_dirs:
        files, source = imagefolder_files(data_dirs)
        return load_dataset("imagefolder", data_files=files, streaming=True, cache_dir=cache_dir, **kwargs), source
    if os.path.isdir(name):
        if any(os.path.isfile(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json")):
            raise UsageError(f"{name} was saved with save_to_disk: load it map-style (drop --streaming).")
        streams = load_dataset(name, config, streaming=True, cache_dir=cache_dir, **kwargs)
        if any(getattr(part.info, "builder_name", None) == "imagefolder" for part in streams.values()):
            check_imagefolder_layout(name)
        return streams, f"local folder {name}"
    if name.lower() in DEMO_DATASETS:
        raise UsageError(f"The demo data {name!r} is small and embedded, not streamed: drop --streaming.")
    hub_id = HUB_DATASET_ALIASES.get(name.lower(), name)
    streams = load_dataset(hub_id, config, streaming=True, cache_dir=cache_dir, **kwargs)
    return streams, f"Hub {name}" + (f" ({config})" if config else "")


def _pick_splits(
    raw: IterableDatasetDict, source: str, train_split: str, eval_split: str | None
) -> tuple[IterableDataset, IterableDataset]:
    if train_split not in raw:
        raise UsageError(f"{source} has no split {train_split!r}; its splits are {list(raw)}. Set --train_split.")
    if eval_split is None:
        eval_split = next((split for split in EVAL_SPLIT_NAMES if split in raw and split != train_split), None)
        if eval_split is None:
            raise UsageError(
                f"{source} has no evaluation split (its splits: {list(raw)}), and a stream cannot hold out part of "
                "its training split (that needs its length). Set --eval_split to one of its splits, or pass "
                "--validation_dir."
            )
    elif eval_split not in raw:
        raise UsageError(f"{source} has no split {eval_split!r}; its splits are {list(raw)}. Set --eval_split.")
    return raw[train_split], raw[eval_split]


def _class_names(train: IterableDataset, evaluation: IterableDataset, label_column: str) -> list[str]:
    """The `ClassLabel` names, else the class ids found in the evaluation split (its label column, read once)."""
    feature = train.features.get(label_column)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if not str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        raise UsageError(
            f"The label column {label_column!r} holds {feature} values, not class ids, and a stream cannot be scanned "
            "for its classes. Store it as a ClassLabel (dataset.class_encode_column(...) before saving or pushing), "
            "or drop --streaming."
        )
    ids = {row[label_column] for row in evaluation.select_columns([label_column])}
    names = [str(i) for i in sorted(i for i in ids if i is not None and i >= 0)]
    logger.info(f"Class ids without names: {len(names)} classes, as found in the evaluation split.")
    return names


def _undecoded(stream: IterableDataset, image_column: str) -> IterableDataset:
    # Raw rows stay encoded through the shuffle buffer; the transform decodes them and names the file of a bad one.
    feature = stream.features.get(image_column) if stream.features else None
    if isinstance(feature, Image) and feature.decode:
        return stream.cast_column(image_column, Image(mode=feature.mode, decode=False))
    return stream


def _is_labelled(label: Any) -> bool:
    return label is not None and label >= 0


def _split_for_process(stream: IterableDataset, rank: int, world_size: int) -> IterableDataset:
    if world_size > 1:
        shards = stream.num_shards
        # Whole shards unless they would be shared too unevenly (a process with one shard more than the others
        # would see its samples that much less often).
        whole = shards % world_size == 0 or shards // world_size >= 10
        if not whole:
            logger.warning(
                f"The training stream has {shards} shards, which {world_size} processes cannot share evenly: each "
                f"process reads the whole stream and keeps every {world_size}-th row. Data files in a multiple of "
                f"{world_size} (or parquet resharded by row group, IterableDataset.reshard()) avoid that reading."
            )
        strategy = "shards" if whole else "examples"
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size, strategy=strategy)
    setattr(stream, _PROCESS, (rank, world_size))
    return stream


def sample_key(image: Any) -> int:
    """A 62-bit key of an image, wherever the stream puts it: a hash of its encoded bytes, else (a file read lazily)
    of its path, else of its pixels."""
    if isinstance(image, dict):
        data = image.get("bytes") or (image.get("path") or "").encode()
    else:
        data = image.tobytes() if isinstance(image, PILImage.Image) else np.ascontiguousarray(image).tobytes()
    if not data:
        raise UsageError("An image with neither bytes nor a path has no key to seed its augmentation with.")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


class _StreamBatch:
    """The map function of a streamed split: label checks, per-sample keys, then the map-style batch transform."""

    def __init__(self, transform_fn: Any, num_labels: int, train: bool, key_column: str | None) -> None:
        self.transform_fn, self.num_labels, self.train, self.key_column = transform_fn, num_labels, train, key_column
        strong = getattr(transform_fn, "strong", None)
        self.keyed = key_column is not None or transform_fn.random or (strong is not None and strong.random)

    def _check_labels(self, batch: dict[str, list]) -> None:
        fn, split = self.transform_fn, "train" if self.train else "eval"
        for row, label in enumerate(batch.get(fn.label_column) or []):
            if label is not None and label < self.num_labels and (self.train or label >= 0):
                continue
            image = batch[fn.image_column][row]
            where = f"the image {image.get('path')}" if isinstance(image, dict) and image.get("path") else "an image"
            if label is None or label < 0:
                fix = "mark unlabelled training images -1 (the teacher supervises them)" if self.train else (
                    "evaluate on a labelled split (--eval_split)")  # fmt: skip
                raise UsageError(f"{split}: {where} is unlabelled (label {label}); {fix}.")
            raise UsageError(
                f"{split}: label {label} of {where} is outside [0, {self.num_labels - 1}] for the {self.num_labels} "
                "classes of the data. Give the model more labels (num_labels / id2label) or fix the data."
            )

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fn = self.transform_fn
        self._check_labels(batch)
        batch = dict(batch)
        if self.key_column is not None:
            batch[fn.index_column] = [int(key) for key in batch[self.key_column]]
        elif self.keyed:
            batch[fn.index_column] = [sample_key(image) for image in batch[fn.image_column]]
        else:
            batch.pop(fn.index_column, None)
        out = fn(batch)
        if self.key_column is None:
            out.pop(SAMPLE_INDEX, None)  # hashes, not dataset indices: no loss may read them as such
        return out


def set_stream_transform(
    dataset: IterableDataset,
    transform_fn: TransformFn,
    *,
    num_labels: int,
    train: bool,
    key_column: str | None = None,
) -> IterableDataset:
    """`dataset`, a split of `load_streaming_dataset`, through the map-style batch transform `transform_fn`
    (`hfkd.data.make_transform_fn`): the same views, teacher pixels and labels (-1: unlabelled, training only; labels
    outside the `num_labels` classes raise, naming the file). `StreamingMixin` advances `transform_fn.set_epoch` at
    each pass of a training stream. For unreadable images build `transform_fn` with `skip_unreadable=True`.

    Determinism: in pass e a sample's random draws come from `sample_seed(seed, e, key)`, its key being its value in
    `key_column` when given (the dataset's own row ids: the draws then equal the map-style path's for that index, and
    batches carry it as `sample_index`), else `sample_key(image)`. A sample gets the same crops in a given pass
    whatever the number of processes, dataloader workers, the shuffle buffer or its place in the stream; the order of
    the samples is reproducible for a fixed seed, world size and number of dataloader workers.
    """
    process = getattr(dataset, _PROCESS, (0, 1))
    dataset = _undecoded(dataset, transform_fn.image_column)
    columns = dataset.column_names
    if key_column is not None and key_column not in (columns or []):
        raise UsageError(f"key_column {key_column!r} is not a column of the stream (columns: {columns}).")
    stream = dataset.map(
        _StreamBatch(transform_fn, num_labels, train, key_column),
        batched=True,
        batch_size=TRANSFORM_BATCH,
        remove_columns=columns,
    )
    if train:
        setattr(stream, _STREAM, (*process, transform_fn))
    return stream


def stream_mark(dataset: Any) -> tuple[int, int, Any] | None:
    """(rank, world_size, transform) of a training stream from `set_stream_transform`, else `None`."""
    return getattr(dataset, _STREAM, None)


RESUME_NEEDS_IGNORE_DATA_SKIP = (
    "--resume_from_checkpoint without --ignore_data_skip would replay and decode every batch already trained on to "
    "skip it. Add --ignore_data_skip: the run restarts the pass it was in (its order and crops)."
)


def check_streaming_arguments(args: DistillationArguments, data_args: Any = None) -> None:
    """Refuse, in one `ValueError` naming each flag and its fix, what does not combine with streamed data: `args`
    (also checked by `StreamingMixin`) and `data_args` (`hfkd.cli.DataArguments`: its `dataset`, `max_*_samples`,
    `labelled_samples`, `shuffle_buffer_size`)."""
    config = args.accelerator_config
    epoch_flags = [
        flag for flag in ("eval_strategy", "save_strategy", "logging_strategy") if getattr(args, flag) == "epoch"
    ]
    checks = [
        (args.max_steps is None or args.max_steps <= 0, "--max_steps is not set: a stream has no known length, so "
         "epochs cannot be counted. Set --max_steps (epochs x training images / global batch size)."),
        (args.teacher_cache_dir is not None, "--teacher_cache_dir: a teacher cache serves samples by their index in "
         "a map-style training set. Run the teacher live (drop --teacher_cache_dir) or drop --streaming."),
        (args.distill_lr_milestones is not None and args.distill_lr_milestones_unit != "steps",
         "--distill_lr_milestones counts epochs, whose length a stream does not know. Give them in optimiser steps "
         "with --distill_lr_milestones_unit steps."),
        (args.distill_lr_decay_epochs is not None and args.distill_lr_milestones_unit != "steps",
         "--distill_lr_decay_epochs (and --distill_lr_warmup_epochs) count epochs, whose length a stream does not "
         "know. Give them in optimiser steps with --distill_lr_milestones_unit steps."),
        (args.uses_teacher and get_loss_class(args.distill_loss).needs.sample_index, f"--distill_loss "
         f"{args.distill_loss} needs dataset indices and the dataset size (a memory bank), which a stream has not. "
         "Choose another loss or drop --streaming."),
        *((True, f"--{flag} epoch: a stream's epochs have no known length (and end at other steps on each "
           f"process). Use --{flag} steps with --{flag.split('_')[0]}_steps N.") for flag in epoch_flags),
        (args.distill_views_per_image > 1, f"--views_per_image {args.distill_views_per_image}: the copies of an "
         "image are rows drawn by index from a map-style dataset, and a stream is read in its own order. Drop "
         "--views_per_image or --streaming."),
        (args.dataloader_persistent_workers and args.dataloader_num_workers > 0, "--dataloader_persistent_workers: "
         "the workers would keep the first pass's copy of the transform, so every pass would see the same crops. "
         "Drop it (workers then restart, with the next pass, at each pass)."),
        (getattr(config, "dispatch_batches", None) is False, "--accelerator_config dispatch_batches false: "
         "evaluation reads the whole evaluation stream, and only batches dispatched from the main process let it "
         "count the padded last batch once. Drop it (training reads each process's part without dispatching)."),
        (getattr(config, "split_batches", False), "--accelerator_config split_batches: each process reads its own "
         "part of a stream, so there is no global batch to split. Drop it and set --per_device_train_batch_size."),
        (args.resume_from_checkpoint not in (None, False, "false", "False") and not args.ignore_data_skip,
         RESUME_NEEDS_IGNORE_DATA_SKIP),
    ]  # fmt: skip
    problems = [message for failed, message in checks if failed]
    if data_args is not None:
        problems += _data_problems(data_args)
    if len(problems) == 1:
        raise UsageError(f"--streaming: {problems[0]}")
    if problems:
        raise UsageError("--streaming does not combine with:\n" + "\n".join(f"- {p}" for p in problems))


def _data_problems(data_args: Any) -> list[str]:
    problems = []
    if getattr(data_args, "dataset", "").lower() in DEMO_DATASETS and getattr(data_args, "train_dir", None) is None:
        problems.append(f"--dataset {data_args.dataset}: the embedded demo data is not streamed. Drop --streaming.")
    for flag, fix in (
        ("max_train_samples", "Drop it, or stream a smaller set of training files."),
        ("max_eval_samples", "Drop it, or stream a smaller evaluation split (--eval_split)."),
        ("labelled_samples", "Drop it; unlabelled training rows may carry label -1 in the data instead."),
    ):
        if getattr(data_args, flag, None) is not None:
            problems.append(f"--{flag} picks seeded random rows, which needs the split's length. {fix}")
    buffer = getattr(data_args, "shuffle_buffer_size", 1)
    if buffer is not None and buffer < 1:
        problems.append(f"--shuffle_buffer_size {buffer}: the buffer holds at least 1 row; 1000 is a usual value.")
    return problems
