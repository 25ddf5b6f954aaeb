"""Offline distillation: run the teacher once, store its outputs per augmented view, train without it.

    python -m hfkd.teacher_cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10
    accelerate launch -m hfkd.teacher_cache ...          # the same, split over every process of every machine

As in FKD (Shen & Xing, *A Fast Knowledge Distillation Framework for Visual Recognition*, ECCV 2022), each epoch's
random crop and flip of every training image is drawn up front from a seed, the teacher sees exactly that view,
and the cache stores the view's parameters with the teacher's top-k probabilities (or its full logits). Training
with `--teacher_cache_dir cache/` replays the same crops for the student and never runs the teacher.

The work is cut into shards of `--shard_size` samples per epoch (`hfkd.cache_store` describes the layout). Each
process builds the shards i with i mod processes = rank, each written whole or not at all; a shard already on disk
and valid is kept, so an interrupted build resumes where it stopped, and the cache is the same bytes whatever the
number of processes that built it. The cache records what it was built from, and training checks it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm
from transformers.utils import logging

from .cache_store import (
    CACHE_CONFIG,
    SELECTION_FILE,
    CacheConfig,
    TeacherCache,
    apply_view,
    check_shard,
    content_sha256,
    crop_params,
    logits_from_topk,
    rows_sha256,
    shard_path,
    view_params,
    weights_sha256,
)
from .image_datasets import decode_image, detect_columns, load_image_dataset
from .local_names import is_local_path, neutral_name
from .models import load_image_classifier, load_image_processor, resolve_model_name
from .transforms import image_config_for_model

logger = logging.get_logger(__name__)

BUILD_PLAN = "cache_build.json"
__all__ = [
    "CacheConfig",
    "ReplayTransform",
    "TeacherCache",
    "apply_view",
    "build_teacher_cache",
    "cache_summary",
    "check_cache_matches",
    "crop_params",
    "logits_from_topk",
    "main",
    "view_params",
]


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: str, config: CacheConfig) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config.to_json())

    _write_atomically(path, write)


def _shard_tensors(
    teacher: torch.nn.Module, images: Any, plan: CacheConfig, epoch: int, shard: int, batch_size: int, device: Any
) -> dict[str, torch.Tensor]:
    """The teacher's outputs on one shard's views. Batches start at the shard's first row, so a sample's batch is
    the same whoever builds the shard."""
    start, end = plan.shard_rows(shard)
    crops, flips, outputs = [], [], []
    for first in range(start, end, batch_size):
        batch = []
        for index in range(first, min(first + batch_size, end)):
            image = images[index]
            box, flip = view_params(plan.seed, epoch, index, image.shape[-2], image.shape[-1])
            batch.append(apply_view(image, box, flip, plan.size, plan.mean, plan.std))
            crops.append(box)
            flips.append(flip)
        outputs.append(teacher(pixel_values=torch.stack(batch).to(device)).logits.float().cpu())
    logits = torch.cat(outputs)
    if logits.shape[-1] != plan.num_classes:
        raise ValueError(f"The teacher gives {logits.shape[-1]} logits per image, its config {plan.num_classes}.")
    tensors = {"crops": torch.tensor(crops, dtype=torch.int32), "flips": torch.tensor(flips, dtype=torch.uint8)}
    if plan.top_k is None:
        tensors["logits"] = logits.contiguous()
    else:
        probs, indices = logits.softmax(-1).topk(min(plan.top_k, plan.num_classes), dim=-1)
        tensors["topk_indices"], tensors["topk_probs"] = indices.int().contiguous(), probs.contiguous()
    return tensors


def _check_plan(output_dir: str, plan: CacheConfig) -> None:
    """Record the build's plan, or check that an interrupted build being resumed had the same one."""
    path = os.path.join(output_dir, BUILD_PLAN)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            earlier = CacheConfig.from_dict(json.load(f))
        differ = [k for k, v in asdict(plan).items() if asdict(earlier).get(k) != v]
        if differ:
            raise ValueError(
                f"{output_dir!r} holds an interrupted cache build with other settings ({', '.join(differ)}). Re-run "
                "it with the same arguments to finish it, or choose another --output_dir."
            )
        return
    _write_json(path, plan)


@torch.no_grad()
def build_teacher_cache(
    teacher: torch.nn.Module,
    images: Sequence[torch.Tensor],
    output_dir: str,
    *,
    teacher_name: str,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
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
) -> CacheConfig:
    """Run `teacher` once per (epoch, sample) view of `images` (uint8 (C, H, W) tensors) and store the views with the
    teacher's top-k probabilities (full logits with `top_k=None`), shard by shard (see the module docstring).

    `teacher_info` and `data` describe what the cache was built from (`data` with `selection`, the rows of the
    training set, so that training can use exactly them); with several processes, each call builds its share and
    `barrier` waits for the others before process 0 writes `cache_config.json`.
    """
    if os.path.isfile(os.path.join(output_dir, CACHE_CONFIG)):
        raise ValueError(f"{output_dir!r} already holds a teacher cache; choose another --output_dir.")
    num_classes = getattr(getattr(teacher, "config", None), "num_labels", None)
    if num_classes is None:
        raise ValueError("The teacher has no `config.num_labels`; pass a transformers or TimmWrapper classifier.")
    info = {**(teacher_info or {}), "weights_sha256": weights_sha256(teacher)}
    plan = CacheConfig(
        teacher=neutral_name(teacher_name),
        num_classes=num_classes,
        num_samples=len(images),
        epochs=epochs,
        top_k=top_k,
        seed=seed,
        size=tuple(size),
        mean=tuple(mean),
        std=tuple(std),
        shard_size=shard_size,
        num_channels=num_channels,
        teacher_info=info,
        data=dict(data or {}),
    )
    if process_index == 0:
        os.makedirs(output_dir, exist_ok=True)
        _check_plan(output_dir, plan)
    barrier()
    teacher = teacher.eval().to(device)
    work = [(e, s) for e in range(epochs) for s in range(plan.num_shards)][process_index::num_processes]
    kept = 0
    for epoch, shard in tqdm(work, desc="Teacher cache shards", disable=not progress):
        path = shard_path(output_dir, epoch, shard)
        with contextlib.suppress(ValueError):
            check_shard(path, plan, len(range(*plan.shard_rows(shard))))
            kept += 1
            continue
        tensors = _shard_tensors(teacher, images, plan, epoch, shard, batch_size, device)
        _write_atomically(path, lambda tmp, t=tensors: save_file(t, tmp, metadata={"format": "pt"}))
    if kept:
        logger.info(f"Kept {kept} shard(s) already built by an earlier run of this build.")
    barrier()
    if process_index == 0:
        for epoch, shard in ((e, s) for e in range(epochs) for s in range(plan.num_shards)):
            check_shard(shard_path(output_dir, epoch, shard), plan, len(range(*plan.shard_rows(shard))))
        if selection is not None:
            tensors = {name: torch.tensor(rows, dtype=torch.int64) for name, rows in selection.items()}
            _write_atomically(os.path.join(output_dir, SELECTION_FILE), lambda tmp: save_file(tensors, tmp))
        _write_json(os.path.join(output_dir, CACHE_CONFIG), plan)
        os.remove(os.path.join(output_dir, BUILD_PLAN))
    barrier()
    return plan


class ReplayTransform:
    """`Dataset.set_transform` function that gives the student the cached view of each image in the current epoch.

    The batch needs a `sample_index` column (`hfkd.data.add_sample_index`); the trainer calls `set_epoch` at the start
    of every epoch. The student's own size and normalisation apply to the same crop box and flip the teacher saw.
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
    ) -> None:
        self.cache, self.image_column, self.label_column = cache, image_column, label_column
        self.size, self.mean, self.std = tuple(size), tuple(mean), tuple(std)
        self.mode = "L" if num_channels == 1 else "RGB"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "sample_index" not in batch:
            raise ValueError("Replaying cached views needs a `sample_index` column: use hfkd.data.add_sample_index.")
        out: dict[str, list] = {"pixel_values": [], "sample_index": list(batch["sample_index"])}
        for image, index in zip(batch[self.image_column], batch["sample_index"]):
            image = decode_image(image)
            tensor = TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))
            box, flip = self.cache.view(self.epoch, int(index))
            out["pixel_values"].append(apply_view(tensor, box, flip, self.size, self.mean, self.std))
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hfkd.teacher_cache",
        description="Run a teacher once over a training set's augmented views (FKD-style), for training without it. "
        "Under `accelerate launch` every process builds its share of the shards.",
    )
    add = parser.add_argument
    add("--teacher", required=True, help="teacher: Hub id, timm/... id, local folder, timm name or alias")
    add("--teacher_revision", default="main", help="revision of the teacher checkpoint")
    add("--dataset", required=True, help="Hub dataset id, imagefolder path or demo data (fashion-mnist, digits)")
    add("--output_dir", required=True, help="the cache folder (an interrupted build here is resumed)")
    add("--dataset_config", default=None, help="dataset configuration name")
    add("--train_split", default="train", help="training split (as the training run's --train_split)")
    add("--eval_split", default=None, help="evaluation split (as the training run's --eval_split)")
    add("--image_column", default=None, help="image column (detected when unambiguous)")
    add("--label_column", default=None, help="label column (detected when unambiguous)")
    add("--max_train_samples", type=int, default=None, help="a seeded subset of the training set")
    add("--epochs", type=int, default=1, help="epochs of views to cache (training cycles over them)")
    add("--top_k", type=int, default=10, help="teacher probabilities kept per view; 0: full logits")
    add("--seed", type=int, default=0, help="seed of the views and of the data selection")
    add("--batch_size", type=int, default=64, help="teacher batch size")
    add("--shard_size", type=int, default=10_000, help="samples per shard file (the unit of work and of resuming)")
    return parser


def main(argv: list[str] | None = None) -> CacheConfig:
    """`python -m hfkd.teacher_cache --teacher ... --dataset ... --output_dir ...`: build a teacher cache."""
    from accelerate import PartialState

    args = _parser().parse_args(argv)
    if os.path.exists(os.path.join(args.output_dir, CACHE_CONFIG)):
        raise ValueError(f"{args.output_dir!r} already holds a teacher cache; choose another --output_dir.")
    for name in ("epochs", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    spec = resolve_model_name(args.teacher, revision=args.teacher_revision)
    state = PartialState()
    dataset = load_image_dataset(
        args.dataset,
        config_name=args.dataset_config,
        train_split=args.train_split,
        eval_split=args.eval_split,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
    )
    train = dataset["train"]
    image_column, label_column = detect_columns(train, args.image_column, args.label_column)
    teacher = load_image_classifier(spec)
    image_config = image_config_for_model(teacher, load_image_processor(spec))
    rows = dataset.rows
    data = {
        "dataset": neutral_name(args.dataset),
        "config": args.dataset_config,
        "train_split": rows["train_split"],
        "eval_split": rows["eval_split"],
        "num_rows": len(train),
        "rows_sha256": rows_sha256(rows["train"]),
        "content_sha256": content_sha256(train, image_column, label_column),
    }
    local = is_local_path(args.teacher)
    teacher_info = {
        "name_or_path": neutral_name(args.teacher),
        "local": local,
        "revision": None if local else args.teacher_revision,
        "commit": getattr(teacher.config, "_commit_hash", None),
    }
    images = _DecodedImages(train, image_column, "L" if image_config.num_channels == 1 else "RGB")
    return build_teacher_cache(
        teacher,
        images,
        args.output_dir,
        teacher_name=args.teacher,
        size=image_config.size,
        mean=image_config.mean,
        std=image_config.std,
        epochs=args.epochs,
        top_k=args.top_k or None,
        seed=args.seed,
        batch_size=args.batch_size,
        device=state.device,
        progress=state.is_local_main_process,
        shard_size=args.shard_size,
        num_channels=image_config.num_channels,
        teacher_info=teacher_info,
        data=data,
        selection={"train_rows": rows["train"], "eval_rows": rows["eval"]},
        process_index=state.process_index,
        num_processes=state.num_processes,
        barrier=state.wait_for_everyone,
    )


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
    teacher: str | None = None,
    teacher_revision: str | None = None,
) -> None:
    """Refuse a training run whose data or teacher differ from what the cache was built from, naming the field.

    `train` is the run's training set, selected with the cache's rows; the cache's content hash must match it.
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
        local = is_local_path(teacher)
        expected["teacher"] = (config.teacher_info.get("name_or_path", config.teacher), neutral_name(teacher))
        if not local and config.teacher_info.get("revision") is not None:
            expected["teacher_model_revision"] = (config.teacher_info["revision"], teacher_revision)
    for field_name, (cached, run) in expected.items():
        if cached is not None and cached != run:
            raise ValueError(
                f"The teacher cache was built with {field_name}={cached!r}, this run has {run!r}. A cache is used "
                "only with the data and teacher it was built from: build one for this run (`python -m "
                "hfkd.teacher_cache`), or drop the differing flag."
            )
    if data.get("content_sha256") and content_sha256(train, image_column, label_column) != data["content_sha256"]:
        raise ValueError(
            "The teacher cache was built on other images than this run's training set (their content hash differs, "
            "with the same dataset name and rows): rebuild the cache on this data."
        )


def cache_summary(config: CacheConfig) -> str:
    """One line on what a cache holds, for logs."""
    what = "full logits" if config.top_k is None else f"top-{config.top_k} probabilities"
    views = f"{config.epochs} epoch(s) x {config.num_samples} views of {config.teacher}"
    return f"{views} ({what}, {config.num_shards} shard(s) per epoch)"


if __name__ == "__main__":
    main()
