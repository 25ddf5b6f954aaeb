"""A teacher cache is used only with what it was built from: `check_cache_matches` refuses a run whose data, selection,
image settings or teacher differ from the cache's record (naming the field), and `cache_summary` says in one line
what a cache holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hfkd.teachers.cache.store import (
    CacheConfig,
    content_sha256,
)
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path, neutral_name


def check_cache_matches(
    config: CacheConfig,
    *,
    dataset: str,
    dataset_config: str | None,
    train_split: str,
    max_train_samples: int | None,
    train: Any,
    image_column: str,
    label_column: str | None,
    teacher: str | Sequence[str] | None = None,
    teacher_revision: str | None = None,
    teacher_weights: Sequence[float] | None = None,
    teacher_ensemble: str | None = None,
    teacher_ensemble_temperature: float | None = None,
) -> None:
    """Refuse a training run whose data or teacher differ from what the cache was built from, naming the field.

    `train` is the run's training set, selected with the cache's rows; the cache's content hash must match it.
    `teacher` is the run's teacher, or its list of teachers (an ensemble's, compared in order), or None (not
    checked); for an ensemble cache, the ensemble settings the run gives (not None) must be the cache's.
    """
    data = config.data
    expected = {
        "dataset": (data.get("dataset"), neutral_name(dataset)),
        "dataset_config": (data.get("config"), dataset_config),
        "train_split": (data.get("train_split"), train_split),
        "max_train_samples": (data.get("num_rows", config.num_samples), max_train_samples or len(train)),
        "number of training images": (config.num_samples, len(train)),
    }
    if teacher is not None:
        expected.update(_teacher_fields(config, teacher, teacher_revision))
    expected.update(_ensemble_fields(config, teacher_weights, teacher_ensemble, teacher_ensemble_temperature))
    for field_name, (cached, run) in expected.items():
        if cached is not None and cached != run:
            raise UsageError(
                f"The teacher cache was built with {field_name}={cached!r}, this run has {run!r}. A cache is used "
                "only with the data and teacher it was built from: build one for this run (`python -m "
                "hfkd.teacher_cache`), or drop the differing flag."
            )
    if data.get("content_sha256") and content_sha256(train, image_column, label_column) != data["content_sha256"]:
        raise UsageError(
            "The teacher cache was built on other images than this run's training set (their content hash differs, "
            "with the same dataset name and rows): rebuild the cache on this data."
        )


def _teacher_fields(
    config: CacheConfig, teacher: str | Sequence[str], teacher_revision: str | None
) -> dict[str, tuple[Any, Any]]:
    """The teacher fields of `check_cache_matches`, as (cached, run): the teacher's name (an ensemble's list) and, for
    a Hub teacher whose revision the cache recorded, the revision."""
    names = [teacher] if isinstance(teacher, str) else list(teacher)
    cached = config.member_names
    run = [neutral_name(name) for name in names]
    expected = {"teacher": (cached if config.ensemble else cached[0], run if len(run) > 1 else run[0])}
    for name, member in zip(names, config.members):
        if not is_local_path(name) and member.get("revision") is not None:
            expected["teacher_model_revision"] = (member["revision"], teacher_revision)
    return expected


def _ensemble_fields(
    config: CacheConfig,
    teacher_weights: Sequence[float] | None,
    teacher_ensemble: str | None,
    teacher_ensemble_temperature: float | None,
) -> dict[str, tuple[Any, Any]]:
    """The ensemble fields of `check_cache_matches`, as (cached, run): those the run gives, for an ensemble cache (the
    run's weights scaled to sum to 1, as the cache's were; both rounded to 6 places)."""
    ensemble = config.ensemble
    expected: dict[str, tuple[Any, Any]] = {}
    if ensemble is not None and teacher_weights is not None:
        total = sum(teacher_weights) or 1.0
        expected["teacher_weights"] = (
            [round(w, 6) for w in ensemble["weights"]],
            [round(w / total, 6) for w in teacher_weights],
        )
    if ensemble is not None and teacher_ensemble is not None:
        expected["teacher_ensemble"] = (ensemble["mode"], teacher_ensemble)
    if ensemble is not None and teacher_ensemble_temperature is not None:
        expected["teacher_ensemble_temperature"] = (ensemble["temperature"], float(teacher_ensemble_temperature))
    return expected


def cache_summary(config: CacheConfig) -> str:
    """One line on what a cache holds, for logs."""
    what = "full logits" if config.top_k is None else f"top-{config.top_k} probabilities"
    views = f"{config.epochs} epoch(s) x {config.num_samples} views of {config.teacher}"
    ensemble = config.ensemble
    if ensemble is not None:
        weights = "/".join(f"{w:.3g}" for w in ensemble["weights"])
        rule = f"{ensemble['mode']} average, weights {weights}"
        if ensemble["temperature"] is not None:
            rule += f", temperature {ensemble['temperature']:g}"
        views += f", an ensemble of {len(config.member_names)} teachers ({rule})"
    return f"{views} ({what}, {config.num_shards} shard(s) per epoch)"
