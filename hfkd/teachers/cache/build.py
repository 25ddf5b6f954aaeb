"""Building a teacher cache: one teacher's (or an ensemble's) outputs on every (epoch, sample) view, shard by shard.

`python -m hfkd.teacher_cache` is the command line around `build_teacher_cache`; `hfkd.cache_store` describes the
layout. The work is the list of (epoch, shard) pairs; process r of N builds pairs r, r + N, ... and writes each shard
whole or not at all (a temporary file renamed into place). A shard's batches start at its first row, so its bytes do
not depend on who built it: the cache is the same whatever the number of processes. A resumed build keeps a shard
only when it verifies it (`verify_shard`: built with the same settings, contents intact) and builds the others again.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm
from transformers.utils import logging

from hfkd.models.label_space import check_same_label_space
from hfkd.teachers.cache.store import (
    CACHE_CONFIG,
    SELECTION_FILE,
    CacheConfig,
    apply_view,
    check_shard,
    read_header,
    shard_path,
    view_params,
)
from hfkd.teachers.combine import check_ensemble_arguments, ensemble_logits, normalized_weights
from hfkd.utils.errors import UsageError
from hfkd.utils.hashing import tensors_sha256, weights_sha256
from hfkd.utils.local_names import neutral_name

logger = logging.get_logger(__name__)


BUILD_PLAN = "cache_build.json"


_TMP_MARK = ".tmp-"


@dataclass
class CacheTeacher:
    """One teacher of a cache and its own preprocessing of the shared crop box.

    Args:
        model (`torch.nn.Module`): a classifier with `config.num_labels`, called as `model(pixel_values=...)`.
        name (`str`): how the teacher was named (a local path is recorded as its folder name).
        size (`tuple[int, int]`), mean (`tuple[float, ...]`), std (`tuple[float, ...]`): its input size and
            normalisation.
        num_channels (`int`, *optional*, defaults to `3`): the channels it takes (1: grayscale).
        info (`dict`, *optional*): what to record about it (`name_or_path`, `local`, `revision`, `commit`).
    """

    model: torch.nn.Module
    name: str
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_channels: int = 3
    info: dict[str, Any] = field(default_factory=dict)


def check_cache_teachers(teachers: Sequence[CacheTeacher]) -> int:
    """The number of classes the teachers predict; a ValueError, before any of them runs, for a teacher without
    `config.num_labels` or for ensemble members of different label spaces (naming both)."""

    labels = []
    for teacher in teachers:
        config = getattr(teacher.model, "config", None)
        if getattr(config, "num_labels", None) is None:
            raise UsageError(
                f"Teacher {teacher.name!r} has no `config.num_labels`; pass a transformers or TimmWrapper classifier."
            )
        labels.append(SimpleNamespace(num_labels=config.num_labels, id2label=getattr(config, "id2label", None)))
    check_same_label_space(labels, [teacher.name for teacher in teachers])
    return labels[0].num_labels


def _teacher_record(
    teachers: Sequence[CacheTeacher], weights: list[float], mode: str, temperature: float
) -> tuple[str, dict[str, Any]]:
    """The cache's `teacher` and `teacher_info`: a single teacher's as they always were, or an ensemble's."""
    if len(teachers) == 1:
        only = teachers[0]
        return neutral_name(only.name), {**only.info, "weights_sha256": weights_sha256(only.model)}
    members = [
        {
            "name_or_path": neutral_name(t.name),
            **t.info,
            "weights_sha256": weights_sha256(t.model),
            "size": list(t.size),
            "mean": list(t.mean),
            "std": list(t.std),
            "num_channels": t.num_channels,
        }
        for t in teachers
    ]
    name = " + ".join(str(m["name_or_path"]) for m in members)
    info = {
        "name_or_path": name,
        "local": any(bool(m.get("local")) for m in members),
        "revision": None,
        "commit": None,
        "ensemble": {"mode": mode, "weights": weights, "temperature": temperature if mode == "probs" else None},
        "members": members,
    }
    return name, info


SHARD_METADATA_KEY = "hfkd"


def shard_metadata(config: CacheConfig, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The safetensors metadata of a shard: the build's settings hash and the tensors' hash, under one key (the
    safetensors writer orders several keys at random, and a build must give the same bytes every time)."""
    record = {"config_sha256": config.sha256(), "tensors_sha256": tensors_sha256(tensors)}
    return {SHARD_METADATA_KEY: json.dumps(record, sort_keys=True)}


def verify_shard(path: str, config: CacheConfig, rows: int) -> None:
    """`check_shard`, then read the whole shard and check that it was built with `config` and is intact: a shard
    kept by a resumed build is one this build would have written. ValueError saying what is wrong otherwise."""
    check_shard(path, config, rows)
    header, _ = read_header(path, metadata=True)
    try:
        record = json.loads(header.get("__metadata__", {})[SHARD_METADATA_KEY])
    except (KeyError, TypeError, ValueError):
        record = None
    if not isinstance(record, dict):
        raise UsageError(f"Teacher cache file {path} carries no build record (written by an older hfkd).")
    if record.get("config_sha256") != config.sha256():
        raise UsageError(f"Teacher cache file {path} was built with other settings.")
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise UsageError(f"Teacher cache file {path} is unreadable ({type(err).__name__}: {err}).") from None
    if tensors_sha256(tensors) != record.get("tensors_sha256"):
        raise UsageError(f"Teacher cache file {path} is corrupt (its contents do not match their hash).")


def _in_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """`image` with the channels a teacher takes (an ensemble's members may differ)."""
    if image.shape[0] == channels:
        return image
    return TF.rgb_to_grayscale(image) if channels == 1 else image.expand(channels, *image.shape[1:])


def _shard_tensors(
    teachers: Sequence[CacheTeacher],
    combine: Callable[[list[torch.Tensor]], torch.Tensor],
    images: Any,
    plan: CacheConfig,
    epoch: int,
    shard: int,
    batch_size: int,
    device: Any,
) -> dict[str, torch.Tensor]:
    """The teachers' combined outputs on one shard's views. Batches start at the shard's first row, so a sample's
    batch is the same whoever builds the shard; every teacher sees the same crop box and flip, preprocessed its way."""
    start, end = plan.shard_rows(shard)
    crops, flips, outputs = [], [], []
    for first in range(start, end, batch_size):
        views = []
        for index in range(first, min(first + batch_size, end)):
            image = images[index]
            box, flip = view_params(plan.seed, epoch, index, image.shape[-2], image.shape[-1])
            views.append((image, box, flip))
            crops.append(box)
            flips.append(flip)
        logits = []
        for t in teachers:
            batch = [apply_view(_in_channels(i, t.num_channels), b, f, t.size, t.mean, t.std) for i, b, f in views]
            logits.append(t.model(pixel_values=torch.stack(batch).to(device)).logits.float().cpu())
        outputs.append(logits[0] if len(teachers) == 1 else combine(logits))
    logits = torch.cat(outputs)
    if logits.shape[-1] != plan.num_classes:
        raise UsageError(f"The teacher gives {logits.shape[-1]} logits per image, its config {plan.num_classes}.")
    tensors = {"crops": torch.tensor(crops, dtype=torch.int32), "flips": torch.tensor(flips, dtype=torch.uint8)}
    if plan.top_k is None:
        tensors["logits"] = logits.contiguous()
    else:
        probs, indices = logits.softmax(-1).topk(min(plan.top_k, plan.num_classes), dim=-1)
        tensors["topk_indices"], tensors["topk_probs"] = indices.int().contiguous(), probs.contiguous()
    return tensors


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}{_TMP_MARK}{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: str, config: CacheConfig) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json())

    _write_atomically(path, write)


def _check_plan(output_dir: str, plan: CacheConfig, write: bool) -> None:
    """Check that an interrupted build being resumed had the same settings (every process does, so that all refuse
    alike); `write`: record this build's settings if there is none (process 0)."""
    path = os.path.join(output_dir, BUILD_PLAN)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            earlier = CacheConfig.from_dict(json.load(f))
        differ = [k for k, v in asdict(plan).items() if asdict(earlier).get(k) != v]
        if differ:
            raise UsageError(
                f"{output_dir!r} holds an interrupted cache build with other settings ({', '.join(differ)}). Re-run "
                "it with the same arguments to finish it, or choose another --output_dir."
            )
    elif write:
        _write_json(path, plan)


def _remove_leftovers(output_dir: str) -> None:
    """Temporary files of writes that a killed build never finished."""
    for path in glob.glob(os.path.join(output_dir, f"*{_TMP_MARK}*")) + glob.glob(
        os.path.join(output_dir, "epoch_*", f"*{_TMP_MARK}*")
    ):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _as_cache_teachers(
    teacher: torch.nn.Module | Sequence[CacheTeacher],
    teacher_name: str | None,
    size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    num_channels: int,
    teacher_info: dict[str, Any] | None,
) -> list[CacheTeacher]:
    """`build_teacher_cache`'s teacher as a list: a bare model described by the other arguments, or CacheTeacher
    objects, which carry their own description and so must come without those arguments."""
    if isinstance(teacher, torch.nn.Module):
        if teacher_name is None or size is None or mean is None or std is None:
            raise UsageError("A teacher model needs teacher_name, size, mean and std (or pass CacheTeacher objects).")
        only = CacheTeacher(teacher, teacher_name, tuple(size), tuple(mean), tuple(std), num_channels)
        only.info = dict(teacher_info or {})
        return [only]
    teachers = list(teacher)
    if not teachers or any(v is not None for v in (teacher_name, size, mean, std, teacher_info)):
        raise UsageError(
            "Pass CacheTeacher objects alone (each carries its name, size, mean, std and info), at least one."
        )
    return teachers


def _cache_plan(
    teachers: Sequence[CacheTeacher], weights: list[float], ensemble: str, ensemble_temperature: float, **settings: Any
) -> CacheConfig:
    """The cache's settings: the teachers' record, the first teacher's size, mean and std (an ensemble's members keep
    their own in the record), the most channels any of them takes, and `settings` (num_classes, num_samples, epochs,
    top_k, seed, shard_size, data)."""
    name, info = _teacher_record(teachers, weights, ensemble, float(ensemble_temperature))
    first = teachers[0]
    return CacheConfig(
        teacher=name,
        size=tuple(first.size),
        mean=tuple(first.mean),
        std=tuple(first.std),
        num_channels=max(t.num_channels for t in teachers),
        teacher_info=info,
        **settings,
    )


def _open_build(output_dir: str, plan: CacheConfig, process_index: int, barrier: Callable[[], None]) -> None:
    """Start or resume the build in `output_dir`: process 0 records the plan, every process checks it against an
    interrupted build's, then (after `barrier`) that it sees process 0's record, i.e. that the folder is shared."""
    if process_index == 0:
        os.makedirs(output_dir, exist_ok=True)
    _check_plan(output_dir, plan, write=process_index == 0)
    barrier()
    if not os.path.isfile(os.path.join(output_dir, BUILD_PLAN)):
        raise UsageError(
            f"Process {process_index} does not see {BUILD_PLAN} that process 0 wrote in {output_dir!r}: a cache built "
            "by several machines needs an --output_dir on a filesystem they all share."
        )


def _build_device(device: str | torch.device) -> torch.device:
    """The device the teachers run on."""
    device = torch.device(device)
    if device.type == "cpu":
        # Accelerate's "cpu:0" would copy the weights elsewhere, and CPU kernels may round differently on other
        # memory: one CPU device gives the same bytes whatever the number of processes.
        device = torch.device("cpu")
    return device


def _all_shards(plan: CacheConfig) -> list[tuple[int, int]]:
    """Every (epoch, shard) pair of the cache, in the order that processes share them out."""
    return [(e, s) for e in range(plan.epochs) for s in range(plan.num_shards)]


def _build_share(
    teachers: Sequence[CacheTeacher],
    combine: Callable[[list[torch.Tensor]], torch.Tensor],
    images: Sequence[torch.Tensor],
    plan: CacheConfig,
    output_dir: str,
    *,
    process_index: int,
    num_processes: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Build this process's shards (pairs r, r + N, ... of `_all_shards`), keeping those an earlier run left that
    `verify_shard` accepts."""
    items = _all_shards(plan)
    work = items[process_index::num_processes]
    kept = 0
    for epoch, shard in tqdm(work, desc="Teacher cache shards", disable=not progress):
        path = shard_path(output_dir, epoch, shard)
        if os.path.exists(path):
            try:
                verify_shard(path, plan, len(range(*plan.shard_rows(shard))))
                kept += 1
                continue
            except ValueError as err:
                logger.warning(f"{err} Building it again.")
        tensors = _shard_tensors(teachers, combine, images, plan, epoch, shard, batch_size, device)
        metadata = shard_metadata(plan, tensors)
        _write_atomically(path, lambda tmp, t=tensors, m=metadata: save_file(t, tmp, metadata=m))
    logger.info(
        f"Teacher cache, process {process_index} of {num_processes}: built {len(work) - kept} of the {len(items)} "
        f"shards, kept {kept} verified from an earlier run."
    )


def _finish_build(output_dir: str, plan: CacheConfig, selection: dict[str, list[int]] | None) -> None:
    """Process 0, once every process has built its share: check every shard, tidy up, write the selection, and turn
    the build plan into the cache's config."""
    for epoch, shard in _all_shards(plan):
        check_shard(shard_path(output_dir, epoch, shard), plan, len(range(*plan.shard_rows(shard))))
    _remove_leftovers(output_dir)
    if selection is not None:
        tensors = {name: torch.tensor(rows, dtype=torch.int64) for name, rows in selection.items()}
        _write_atomically(os.path.join(output_dir, SELECTION_FILE), lambda tmp: save_file(tensors, tmp))
    # The plan goes first: a build killed between the two is resumed (its shards verify) instead of refused.
    os.remove(os.path.join(output_dir, BUILD_PLAN))
    _write_json(os.path.join(output_dir, CACHE_CONFIG), plan)


@torch.no_grad()
def build_teacher_cache(
    teacher: torch.nn.Module | Sequence[CacheTeacher],
    images: Sequence[torch.Tensor],
    output_dir: str,
    *,
    teacher_name: str | None = None,
    size: tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    epochs: int = 1,
    top_k: int | None = 10,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
    shard_size: int = 10_000,
    num_channels: int = 3,
    teacher_info: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    selection: dict[str, list[int]] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] = lambda: None,
    teacher_weights: Sequence[float] | None = None,
    ensemble: str = "probs",
    ensemble_temperature: float = 1.0,
) -> CacheConfig:
    """Run the teacher once per (epoch, sample) view of `images` (uint8 (C, H, W) tensors) and store the views with
    its top-k probabilities (full logits with `top_k=None`), shard by shard (see the module docstring).

    `teacher` is a model (then `teacher_name`, `size`, `mean`, `std` and `teacher_info` describe it) or a list of
    `CacheTeacher`: two or more make an ensemble whose logits `hfkd.ensemble.ensemble_logits` combines with
    `teacher_weights`, `ensemble` (`"probs"` or `"logits"`) and `ensemble_temperature`. `data` and `selection` (the
    rows of the training set) describe the data, so that training can use exactly them. With several processes each
    call builds its share and `barrier` waits for the others; process 0 then writes `cache_config.json`.
    """
    teachers = _as_cache_teachers(teacher, teacher_name, size, mean, std, num_channels, teacher_info)
    check_ensemble_arguments([t.name for t in teachers], teacher_weights, ensemble, ensemble_temperature, None)
    if os.path.isfile(os.path.join(output_dir, CACHE_CONFIG)):
        raise UsageError(f"{output_dir!r} already holds a teacher cache; choose another --output_dir.")
    num_classes = check_cache_teachers(teachers)
    weights = normalized_weights(teacher_weights, len(teachers))
    plan = _cache_plan(
        teachers, weights, ensemble, ensemble_temperature, num_classes=num_classes, num_samples=len(images),
        epochs=epochs, top_k=top_k, seed=seed, shard_size=shard_size, data=dict(data or {}),
    )  # fmt: skip
    _open_build(output_dir, plan, process_index, barrier)
    device = _build_device(device)
    for t in teachers:
        t.model = t.model.eval().to(device)
    combine = functools.partial(ensemble_logits, weights=weights, mode=ensemble, temperature=ensemble_temperature)
    _build_share(
        teachers, combine, images, plan, output_dir, process_index=process_index, num_processes=num_processes,
        batch_size=batch_size, device=device, progress=progress,
    )  # fmt: skip
    barrier()
    if process_index == 0:
        _finish_build(output_dir, plan, selection)
    barrier()
    return plan
