"""Image datasets: `load_image_dataset` (Hub id, local folder, demo data), column and label checks, decoding;
`load_dense_dataset`, the sources that the segmentation and detection datasets share.

The public names are re-exported by `hfkd.data`.
"""

from __future__ import annotations

import glob
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk
from transformers.utils import logging

from hfkd.data.batch import SAMPLE_INDEX
from hfkd.data.demo import DEMO_DATASETS, load_demo_dataset
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


# Short names people type for the datasets of the distillation tables, mapped to their Hub ids.
HUB_DATASET_ALIASES = {
    "imagenet-1k": "ILSVRC/imagenet-1k",
    "imagenet": "ILSVRC/imagenet-1k",
    "cifar100": "uoft-cs/cifar100",
    "cifar-100": "uoft-cs/cifar100",
    "cifar10": "uoft-cs/cifar10",
    "cifar-10": "uoft-cs/cifar10",
}


IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values", "picture", "photo", "jpg", "png")


LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "class_id", "label_id")


EVAL_SPLIT_NAMES = ("validation", "val", "valid", "test")


ROW_COLUMN = "__hfkd_row__"
"""A row's position in its split, carried through the selection and dropped before the dataset is returned."""


Info = TypeVar("Info")
"""What a dense task's own reader says of its source besides the rows (class names, a label lookup)."""


def load_image_dataset(
    name_or_path: str,
    *,
    config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 42,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    rows: dict[str, Any] | None = None,
    data_dirs: dict[str, str] | None = None,
    **kwargs: Any,
) -> DatasetDict:
    """Load an image-classification dataset as a `DatasetDict` with splits "train" and "eval".

    Args:
        name_or_path (`str`): a Hub dataset id (`datasets.load_dataset(name, config_name)`); a local folder in
            imagefolder layout (`<dir>/<class>/<image>` or `<dir>/<split>/<class>/<image>`, class names from the
            folder names) or saved with `save_to_disk`; or demo data, `"fashion-mnist"` or `"digits"`.
        config_name (`str`, *optional*): dataset configuration on the Hub.
        train_split (`str`, *optional*, defaults to `"train"`): split to train on.
        eval_split (`str`, *optional*):
            Split to evaluate on. Defaults to the first of "validation", "val", "valid", "test" that exists, else
            a seeded, label-stratified `eval_fraction` of the train split.
        eval_fraction (`float`, *optional*, defaults to `0.1`): share of train held out when there is no eval split.
        seed (`int`, *optional*, defaults to `42`): seed of the split-off and of the `max_*_samples` subsets.
        cache_dir (`str`, *optional*): `datasets` cache directory.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Forwarded to `load_dataset` where the installed `datasets` still accepts it (script datasets).
        max_train_samples (`int`, *optional*), max_eval_samples (`int`, *optional*):
            Keep a seeded random subset of this size (random, not the first rows, which are often one class).
        rows (`dict`, *optional*):
            An exact selection, as recorded in the `rows` attribute of an earlier result (a teacher cache keeps its
            own): `train_split`/`train` and `eval_split`/`eval`, the split names and row positions in them. It
            replaces the seeded split-off and subsets, so the result does not depend on `seed`.
        data_dirs (`dict[str, str]`, *optional*): one image folder per split (`{"train": ..., "validation": ...}`,
            transformers' `--train_dir` / `--validation_dir`), each `<dir>/<class>/<image>`; `name_or_path` then only
            names the data.
        kwargs: forwarded to `datasets.load_dataset` (`revision`, `token`, `data_files`, ...).

    Returns:
        `DatasetDict`: splits "train" and "eval". Its `source` attribute (a `str`, not kept by `.map()` and
        friends) says where the data came from; it is also logged. Its `rows` attribute records the selection:
        the split each part comes from and the positions of its rows there, in order.
    """
    raw, source = _load_source(
        name_or_path, config_name, data_dirs, cache_dir, trust_remote_code, eval_fraction, seed, kwargs
    )
    raw = _with_row_positions(raw, train_split)
    if rows is not None:
        train, evaluation, eval_from = _select_rows(raw, name_or_path, rows)
    else:
        train, evaluation, eval_from = _pick_splits(raw, source, train_split, eval_split, eval_fraction, seed)
    dataset = _encode_string_labels(DatasetDict({"train": train, "eval": evaluation}))
    if rows is None:
        dataset = keep_at_most(dataset, max_train_samples, max_eval_samples, seed)
    return _with_selection(dataset, source, train_split, eval_from)


def _load_source(
    name_or_path: str,
    config_name: str | None,
    data_dirs: dict[str, str] | None,
    cache_dir: str | None,
    trust_remote_code: bool,
    eval_fraction: float,
    seed: int,
    kwargs: dict[str, Any],
) -> tuple[Dataset | DatasetDict, str]:
    """The data `load_image_dataset` names, as loaded (one dataset or its splits), and where it came from."""
    if data_dirs:
        files, source = imagefolder_files(data_dirs)
        return load_dataset("imagefolder", data_files=files, cache_dir=cache_dir, **kwargs), source
    if os.path.isdir(name_or_path):
        if any(os.path.isfile(os.path.join(name_or_path, f)) for f in ("dataset_dict.json", "state.json")):
            return load_from_disk(name_or_path), f"save_to_disk folder {name_or_path}"
        check_imagefolder_layout(name_or_path)
        raw = load_dataset("imagefolder", data_dir=name_or_path, cache_dir=cache_dir, **kwargs)
        return raw, f"imagefolder {name_or_path}"
    if name_or_path.lower() in DEMO_DATASETS:
        return load_demo_dataset(
            name_or_path, eval_fraction=eval_fraction, seed=seed, cache_dir=cache_dir, split_digits=False
        )
    return _load_from_hub(name_or_path, config_name, cache_dir, trust_remote_code, kwargs)


def _load_from_hub(
    name_or_path: str, config_name: str | None, cache_dir: str | None, trust_remote_code: bool, kwargs: dict[str, Any]
) -> tuple[Dataset | DatasetDict, str]:
    """A Hub dataset (a short name such as `cifar100` is its Hub id) and where it came from."""
    if trust_remote_code and "trust_remote_code" in inspect.signature(load_dataset).parameters:
        kwargs["trust_remote_code"] = True
    elif trust_remote_code:
        logger.warning("This `datasets` version runs no dataset scripts; ignoring trust_remote_code=True.")
    hub_id = HUB_DATASET_ALIASES.get(name_or_path.lower(), name_or_path)
    if hub_id != name_or_path:
        logger.info(f"Dataset {name_or_path!r} is {hub_id!r} on the Hub.")
    raw = load_dataset(hub_id, config_name, cache_dir=cache_dir, **kwargs)
    return raw, f"Hub {name_or_path}" + (f" ({config_name})" if config_name else "")


def _with_row_positions(raw: Dataset | DatasetDict, train_split: str) -> DatasetDict:
    """`raw` as splits (a lone dataset is the train split) whose rows carry their position in their split."""
    if isinstance(raw, Dataset):
        raw = DatasetDict({train_split: raw})
    # Each row carries its position in its split, so that the selection can be recorded and replayed.
    return DatasetDict({name: part.add_column(ROW_COLUMN, list(range(len(part)))) for name, part in raw.items()})


def keep_at_most(
    dataset: DatasetDict, max_train_samples: int | None, max_eval_samples: int | None, seed: int
) -> DatasetDict:
    """`dataset` with seeded random subsets of at most `max_train_samples` / `max_eval_samples` rows of its "train"
    and "eval" splits (every task's loader keeps its subsets so); a limit below 1 is refused."""
    for split, limit in (("train", max_train_samples), ("eval", max_eval_samples)):
        if limit is not None:
            if limit < 1:
                raise UsageError(f"max_{split}_samples must be >= 1, got {limit}. Leave it unset to use all rows.")
            if limit < len(dataset[split]):
                dataset[split] = dataset[split].shuffle(seed=seed).select(range(limit))
    return dataset


def _with_selection(dataset: DatasetDict, source: str, train_split: str, eval_from: str) -> DatasetDict:
    """`dataset` without the row positions, its `source` and `rows` attributes set (see `load_image_dataset`)."""
    selected = {"train_split": train_split, "eval_split": eval_from}
    selected.update({name: list(dataset[name][ROW_COLUMN]) for name in ("train", "eval")})
    dataset = DatasetDict({name: part.remove_columns(ROW_COLUMN) for name, part in dataset.items()})
    dataset.source, dataset.rows = source, selected
    logger.info(f"Image data from {source}: {len(dataset['train'])} train / {len(dataset['eval'])} eval rows.")
    return dataset


def imagefolder_files(data_dirs: dict[str, str]) -> tuple[dict[str, str], str]:
    """The `data_files` of one image folder per split (`--train_dir`, `--validation_dir`), each checked, and how to
    name them."""
    for folder in data_dirs.values():
        if not os.path.isdir(folder):
            raise UsageError(f"Image folder {folder!r} does not exist; pass a <dir>/<class>/<image> tree.")
        check_imagefolder_layout(folder)
    files = {split: os.path.join(folder, "**") for split, folder in data_dirs.items()}
    return files, "image folders " + " + ".join(f"{split}: {folder}" for split, folder in data_dirs.items())


def check_imagefolder_layout(folder: str) -> None:
    """An imagefolder names its classes by subfolder: `<folder>/<class>/<image>` or `<folder>/<split>/<class>/...`."""
    subfolders = [entry for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")]
    if not subfolders:
        raise UsageError(
            f"The image folder {folder!r} has no class subfolders (its images would get no labels): put each class's "
            f"images in {os.path.join(folder, '<class>')}/, or {os.path.join(folder, '<split>', '<class>')}/ with "
            "splits such as train and validation."
        )
    split_names = {"train", "training", *EVAL_SPLIT_NAMES}
    for entry in subfolders:
        if entry.name.lower() in split_names and not any(sub.is_dir() for sub in os.scandir(entry.path)):
            raise UsageError(
                f"The split folder {entry.path!r} has no class subfolders: put each class's images in "
                f"{os.path.join(entry.path, '<class>')}/."
            )


def _pick_splits(
    raw: DatasetDict, name: str, train_split: str, eval_split: str | None, eval_fraction: float, seed: int
) -> tuple[Dataset, Dataset, str]:
    """The train and eval splits of `raw` and the eval split's name (see `load_image_dataset`). Messages call the data
    `name`: `load_image_dataset` passes the data actually loaded (the digits, when Fashion-MNIST fell back to them)."""
    if train_split not in raw:
        raise UsageError(
            f"{name} has no split {train_split!r}; its splits are {list(raw)}. Set --train_split to one of them."
        )
    if eval_split is not None:
        if eval_split not in raw:
            raise UsageError(
                f"{name} has no split {eval_split!r}; its splits are {list(raw)}. Set --eval_split to one of them, "
                "or leave it unset to hold out --eval_fraction of the train split."
            )
        return raw[train_split], raw[eval_split], eval_split
    found = next((split for split in EVAL_SPLIT_NAMES if split in raw and split != train_split), None)
    if found is not None:
        logger.info(f"Evaluating on the {found!r} split of {name}.")
        return raw[train_split], raw[found], found
    if not 0.0 < eval_fraction < 1.0:
        raise UsageError(
            f"{name} has no evaluation split (splits: {list(raw)}) and eval_fraction={eval_fraction} cannot split one "
            "off. Pass an eval_fraction in (0, 1) or set --eval_split."
        )
    train = raw[train_split]
    label = _find_column(train, None, LABEL_COLUMN_NAMES, ClassLabel)
    stratify = label if label is not None and isinstance(train.features[label], ClassLabel) else None
    try:
        parts = train.train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column=stratify)
    except ValueError as err:  # too few rows of some class to stratify
        logger.warning(f"Stratified split failed ({err}); splitting {name} at random instead.")
        parts = train.train_test_split(test_size=eval_fraction, seed=seed)
    logger.info(f"{name} has no evaluation split: holding out {len(parts['test'])} train rows (seed {seed}).")
    return parts["train"], parts["test"], train_split


def load_dense_dataset(
    name_or_path: str,
    read_own: Callable[[str], tuple[Dataset | DatasetDict, str, Info] | None],
    folder_error: str,
    *,
    task: str,
    config_name: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
    fallback_splits: tuple[str, str] | None = None,
    **kwargs: Any,
) -> tuple[DatasetDict, Info | None]:
    """A segmentation or detection dataset as splits "train" and "eval" with its `source`, and what `read_own` said
    of it (`None` for the shared sources).

    The source is the task's own when `read_own(name_or_path)` returns `(raw, source, info)` (demo scenes, Cityscapes
    or COCO folders); otherwise a `save_to_disk` folder, a folder of parquet files, or a Hub id (`config_name`,
    `cache_dir` and `kwargs` go to `load_dataset`); any other folder is refused with `folder_error`, a `str.format`
    template of `name_or_path` that names the task's layouts.
    `fallback_splits` (train, eval) are used when there is no `train_split` (COCO 2017's `train2017` / `val2017`);
    `max_*_samples` keep seeded random subsets; `task` names the data in the log.
    """
    raw, source, info = _read_dense_source(name_or_path, read_own, folder_error, config_name, cache_dir, kwargs)
    if isinstance(raw, Dataset):
        raw = DatasetDict({train_split: raw})
    if fallback_splits is not None and train_split not in raw and fallback_splits[0] in raw:
        train_split, fallback_eval = fallback_splits
        eval_split = eval_split or (fallback_eval if fallback_eval in raw else None)
    train, evaluation, _ = _pick_splits(raw, source, train_split, eval_split, eval_fraction, seed)
    dataset = DatasetDict({"train": train, "eval": evaluation})
    dataset = keep_at_most(dataset, max_train_samples, max_eval_samples, seed)
    dataset.source = source
    logger.info(f"{task} data from {source}: {len(dataset['train'])} train / {len(dataset['eval'])} eval rows.")
    return dataset, info


def _read_dense_source(
    name_or_path: str,
    read_own: Callable[[str], tuple[Dataset | DatasetDict, str, Info] | None],
    folder_error: str,
    config_name: str | None,
    cache_dir: str | None,
    kwargs: dict[str, Any],
) -> tuple[Dataset | DatasetDict, str, Info | None]:
    """(raw data, where it came from, what the task's reader said of it): see `load_dense_dataset`."""
    own = read_own(name_or_path)
    if own is not None:
        return own
    if os.path.isdir(name_or_path) and any(
        os.path.isfile(os.path.join(name_or_path, f)) for f in ("dataset_dict.json", "state.json")
    ):
        return load_from_disk(name_or_path), f"save_to_disk folder {name_or_path}", None
    if os.path.isdir(name_or_path) and glob.glob(os.path.join(name_or_path, "**", "*.parquet"), recursive=True):
        raw = load_dataset("parquet", data_dir=name_or_path, cache_dir=cache_dir, **kwargs)
        return raw, f"parquet folder {name_or_path}", None
    if os.path.isdir(name_or_path):
        raise UsageError(folder_error.format(name_or_path=name_or_path))
    raw = load_dataset(name_or_path, config_name, cache_dir=cache_dir, **kwargs)
    return raw, f"Hub {name_or_path}" + (f" ({config_name})" if config_name else ""), None


def _select_rows(raw: DatasetDict, name: str, rows: dict[str, Any]) -> tuple[Dataset, Dataset, str]:
    """The recorded selection `rows` of `raw` (see `load_image_dataset`) and its eval split's name, refused when it
    does not fit."""
    parts = []
    for part in ("train", "eval"):
        split = rows[f"{part}_split"]
        if split not in raw:
            raise UsageError(f"{name} has no split {split!r} (its splits: {list(raw)}), which the selection names.")
        positions = rows[part]
        if positions and max(positions) >= len(raw[split]):
            raise UsageError(
                f"The selection names row {max(positions)} of {name}'s {split!r} split, which has {len(raw[split])} "
                "rows: it was made on other data."
            )
        parts.append(raw[split].select(positions))
    return parts[0], parts[1], rows["eval_split"]


def _encode_string_labels(dataset: DatasetDict) -> DatasetDict:
    # Both splits get the same ClassLabel so ids match; splitting them separately could order classes differently.
    label = _find_column(dataset["train"], None, LABEL_COLUMN_NAMES, ClassLabel)
    if label is None or getattr(dataset["train"].features[label], "dtype", None) not in ("string", "large_string"):
        return dataset
    names = sorted({str(v) for split in dataset.values() for v in split.unique(label) if v is not None})
    logger.info(f"Encoding the string column {label!r} as a ClassLabel with {len(names)} classes.")
    return DatasetDict({k: v.cast_column(label, ClassLabel(names=names)) for k, v in dataset.items()})


def add_sample_index(dataset: Dataset, column: str = SAMPLE_INDEX) -> Dataset:
    """Add `column` = row position (0..len-1), for losses whose `needs.sample_index` asks for it, and for errors.

    Call it after any filtering (`filter_unreadable`) so that the positions stay contiguous. A dataset with an
    indices mapping (after `shuffle`, `select`, `train_test_split`) is flattened first, which copies it.
    """
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, np.arange(len(dataset), dtype=np.int64))


def _features(dataset: Dataset | DatasetDict) -> dict[str, Any]:
    if isinstance(dataset, DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    features = getattr(dataset, "features", None)
    return dict(features) if features else dict.fromkeys(dataset.column_names)


def _find_column(dataset: Any, given: str | None, names: tuple[str, ...], feature_type: type) -> str | None:
    features = _features(dataset)
    if given is not None:
        return given if given in features else None
    typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(typed) == 1:
        return typed[0]
    # Several typed columns (CIFAR-100: fine_label + coarse_label) or none: fall back to the usual names.
    candidates = [name for name in (typed or features) if name in names]
    return candidates[0] if len(candidates) == 1 else None


def detect_columns(
    dataset: Dataset | DatasetDict, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Find `(image_column, label_column)`, checking given names.

    The image column is the one `datasets.Image` feature, else the one column named like an image (`image`, `img`,
    `pixel_values`, ...). The label column is the one `ClassLabel`, else among several the one with a usual label
    name (`label`, `labels`, `fine_label`, ...), else the one so-named column. A missing or ambiguous column
    raises a `ValueError` that lists the columns and the flag to set (`--image_column` / `--label_column`).
    """
    features = _features(dataset)
    found = []
    for given, names, kind, flag in (
        (image_column, IMAGE_COLUMN_NAMES, Image, "--image_column"),
        (label_column, LABEL_COLUMN_NAMES, ClassLabel, "--label_column"),
    ):
        column = _find_column(dataset, given, names, kind)
        if column is None:
            columns = ", ".join(f"{name} ({type(f).__name__})" for name, f in features.items())
            what = "image" if kind is Image else "label"
            problem = f"has no column {given!r}" if given else f"has no single obvious {what} column"
            raise UsageError(f"The dataset {problem}; its columns are: {columns}. Set {flag} to one of them.")
        found.append(column)
    if found[0] == found[1]:
        raise UsageError(f"Image and label column are both {found[0]!r}. Set --image_column and --label_column.")
    return found[0], found[1]


def class_names(dataset: Dataset | DatasetDict, label_column: str) -> list[str]:
    """Class names for `id2label`: the `ClassLabel` names, else the sorted unique label values as strings."""
    if isinstance(dataset, DatasetDict):
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    feature = dataset.features.get(label_column)
    if feature is None:
        raise UsageError(f"No column {label_column!r}; columns are {dataset.column_names}. Set --label_column.")
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(value) for value in sorted(v for v in dataset.unique(label_column) if v is not None)]


def check_labels(dataset: Dataset | DatasetDict, label_column: str, num_labels: int) -> None:
    """Raise a `ValueError` naming the first label outside `[0, num_labels)`, its row and the fix.

    Reads the Arrow column (no row iteration), so it is fast on large datasets.
    """
    splits = dataset.items() if isinstance(dataset, DatasetDict) else [(dataset.split or "dataset", dataset)]
    for split, part in splits:
        if label_column not in part.column_names:
            raise UsageError(f"{split} has no column {label_column!r}; columns are {part.column_names}.")
        column = part.with_format("arrow")[label_column]
        if column.null_count:
            index = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise UsageError(f"{split}: label at index {index} is missing. Drop unlabelled rows before training.")
        values = column.to_numpy()
        if not np.issubdtype(values.dtype, np.integer):
            raise UsageError(
                f"{split}: column {label_column!r} holds {values.dtype} values, not class ids. Encode it first: "
                f"dataset = dataset.class_encode_column({label_column!r})."
            )
        bad = np.flatnonzero((values < 0) | (values >= num_labels))
        if bad.size:
            index, value = int(bad[0]), int(values[bad[0]])
            fix = (
                "-1 marks unlabelled rows (typical of a test split): evaluate on a labelled split (--eval_split)."
                if value < 0
                else f"Give the model at least {int(values.max()) + 1} labels (num_labels / id2label) or fix the data."
            )
            raise UsageError(
                f"{split}: label {value} at index {index} of column {label_column!r} is outside [0, {num_labels - 1}] "
                f"for num_labels={num_labels} ({bad.size} rows out of range). {fix}"
            )


def labelled_rows(count: int, num_labelled: int, *, seed: int = 42) -> np.ndarray:
    """The sorted indices of the `num_labelled` seeded random rows of `count` that keep their labels."""
    if not 0 < num_labelled <= count:
        raise UsageError(f"--labelled_samples must be between 1 and the {count} training images, got {num_labelled}.")
    return np.sort(np.random.default_rng(seed).choice(count, size=num_labelled, replace=False))


def keep_labelled_subset(
    dataset: Dataset, label_column: str, num_labelled: int, *, seed: int = 42, drop_unlabelled: bool = False
) -> Dataset:
    """Keep the labels of `num_labelled` seeded random rows; mark the others unlabelled (label -1).

    The trainer gives unlabelled rows no cross-entropy, only the distillation loss: the teacher labels what nobody
    labelled. With `drop_unlabelled=True` (CE-only runs, which have no teacher) the unlabelled rows are removed.
    """
    keep = labelled_rows(len(dataset), num_labelled, seed=seed)
    if drop_unlabelled:
        return dataset.select(keep)
    labels = np.asarray(dataset.select_columns([label_column])[label_column], dtype=np.int64)
    masked = np.full_like(labels, -1)
    masked[keep] = labels[keep]
    feature = dataset.features[label_column]
    return dataset.remove_columns(label_column).add_column(label_column, masked.tolist(), feature=feature)
