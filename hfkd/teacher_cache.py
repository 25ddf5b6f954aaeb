"""Offline distillation: run the teacher once, store its outputs per augmented view, train without it.

    python -m hfkd.teacher_cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10
    accelerate launch -m hfkd.teacher_cache ...          # the same, split over every process of every machine
    python -m hfkd.teacher_cache --teacher A --teacher B --teacher_weights 0.7 0.3 ...   # an ensemble's outputs

As in FKD (Shen & Xing, *A Fast Knowledge Distillation Framework for Visual Recognition*, ECCV 2022), each epoch's
random crop and flip of every training image is drawn up front from a seed, the teacher sees exactly that view,
and the cache stores the view's parameters with the teacher's top-k probabilities (or its full logits). Training
with `--teacher_cache_dir cache/` replays the same crops for the student and never runs the teacher.

The work is cut into shards of `--shard_size` samples per epoch (`hfkd.cache_store` describes the layout) and split
over the processes of `accelerate launch` (on machines without GPUs add `--use_cpu`; the output folder must be on a
filesystem every machine sees). Each shard is written whole or not at all, so an interrupted build resumes where
it stopped when the same command runs again: the shards it verifies are kept, the others built again. The cache is
the same bytes whatever the number of processes that built it (`hfkd.cache_build`). Several `--teacher` make an
ensemble: each teacher preprocesses the shared crop its own way (size, mean, std), `hfkd.ensemble.ensemble_logits`
combines their logits and the cache stores the combination. The cache records what it was built from, and training
checks it.
"""

from __future__ import annotations

import argparse
import logging as std_logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF

from .cache_build import CacheTeacher, build_teacher_cache, check_cache_teachers
from .cache_store import (
    CACHE_CONFIG,
    CacheConfig,
    TeacherCache,
    apply_view,
    content_sha256,
    crop_params,
    logits_from_topk,
    rows_sha256,
    view_params,
)
from .ensemble import ENSEMBLE_MODES, check_ensemble_arguments
from .image_datasets import detect_columns, load_image_dataset
from .image_decode import decode_image
from .local_names import is_local_path, neutral_name
from .models import load_image_classifier, load_image_processor, resolve_model_name
from .transforms import image_config_for_model

__all__ = [
    "CacheConfig",
    "CacheTeacher",
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


class ReplayTransform:
    """`Dataset.set_transform` function that gives the student the cached view of each image in the current epoch.

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
            raise ValueError("Replaying cached views needs a `sample_index` column: use hfkd.data.add_sample_index.")
        out: dict[str, list] = {"pixel_values": [], "sample_index": list(batch["sample_index"])}
        for image, index in zip(batch[self.image_column], batch["sample_index"]):
            image = decode_image(image)
            tensor = TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))
            box, flip = self.cache.view(self.epoch, int(index))
            view = apply_view(tensor, box, flip, self.size, self.mean, self.std, self.interpolation)
            out["pixel_values"].append(view)
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
        description="Run a teacher (or an ensemble) once over a training set's augmented views (FKD-style), for "
        "training without it. Under `accelerate launch` every process builds its share of the shards.",
    )
    add = parser.add_argument
    add("--teacher", required=True, action="extend", nargs="+", metavar="MODEL",
        help="teacher: Hub id, timm/... id, local folder, timm name or alias; two or more (repeat the flag or list "
        "them) make an ensemble")  # fmt: skip
    add("--teacher_revision", default="main", help="revision of the teacher checkpoints")
    add("--teacher_weights", type=float, nargs="+", default=None, metavar="W",
        help="ensemble: one weight per --teacher (normalised to sum 1; equal by default)")  # fmt: skip
    add("--teacher_ensemble", default="probs", choices=ENSEMBLE_MODES,
        help="ensemble: 'probs' averages the teachers' softened distributions, 'logits' their logits")  # fmt: skip
    add("--teacher_ensemble_temperature", type=float, default=1.0,
        help="ensemble: temperature of the 'probs' average")  # fmt: skip
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
    add("--use_cpu", action="store_true",
        help="run on CPU even with a GPU; under `accelerate launch` on machines without GPUs, this makes the "
        "processes one CPU (gloo) group that shares the work")  # fmt: skip
    return parser


def _load_teacher(name: str, revision: str) -> CacheTeacher:
    spec = resolve_model_name(name, revision=revision)
    model = load_image_classifier(spec)
    image_config = image_config_for_model(model, load_image_processor(spec))
    local = is_local_path(name)
    info = {
        "name_or_path": neutral_name(name),
        "local": local,
        "revision": None if local else revision,
        "commit": getattr(model.config, "_commit_hash", None),
    }
    return CacheTeacher(
        model, name, image_config.size, image_config.mean, image_config.std, image_config.num_channels, info
    )


def main(argv: list[str] | None = None) -> CacheConfig:
    """`python -m hfkd.teacher_cache --teacher ... --dataset ... --output_dir ...`: build a teacher cache."""
    from accelerate import PartialState


    args = _parser().parse_args(argv)
    if os.path.exists(os.path.join(args.output_dir, CACHE_CONFIG)):
        raise ValueError(f"{args.output_dir!r} already holds a teacher cache; choose another --output_dir.")
    for name in ("epochs", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    check_ensemble_arguments(
        args.teacher, args.teacher_weights, args.teacher_ensemble, args.teacher_ensemble_temperature, None
    )
    state = PartialState(cpu=args.use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise ValueError(
            f"This build was launched as {launched} processes, but Accelerate runs {state.num_processes} (each would "
            "build every shard). Without GPUs, add --use_cpu so that the processes share the work over CPU."
        )
    # Every teacher is loaded, and their label spaces compared, before any data is read or any teacher runs.
    teachers = [_load_teacher(name, args.teacher_revision) for name in args.teacher]
    check_cache_teachers(teachers)
    with state.local_main_process_first():  # one process per machine fills the `datasets` cache
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
    channels = max(teacher.num_channels for teacher in teachers)
    return build_teacher_cache(
        teachers,
        _DecodedImages(train, image_column, "L" if channels == 1 else "RGB"),
        args.output_dir,
        epochs=args.epochs,
        top_k=args.top_k or None,
        seed=args.seed,
        batch_size=args.batch_size,
        device=state.device,
        progress=state.is_local_main_process,
        shard_size=args.shard_size,
        data=data,
        selection={"train_rows": rows["train"], "eval_rows": rows["eval"]},
        process_index=state.process_index,
        num_processes=state.num_processes,
        barrier=state.wait_for_everyone,
        teacher_weights=args.teacher_weights,
        ensemble=args.teacher_ensemble,
        ensemble_temperature=args.teacher_ensemble_temperature,
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
        names = [teacher] if isinstance(teacher, str) else list(teacher)
        cached = config.member_names
        run = [neutral_name(name) for name in names]
        expected["teacher"] = (cached if config.ensemble else cached[0], run if len(run) > 1 else run[0])
        for name, member in zip(names, config.members):
            if not is_local_path(name) and member.get("revision") is not None:
                expected["teacher_model_revision"] = (member["revision"], teacher_revision)
    ensemble = config.ensemble
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
    ensemble = config.ensemble
    if ensemble is not None:
        weights = "/".join(f"{w:.3g}" for w in ensemble["weights"])
        rule = f"{ensemble['mode']} average, weights {weights}"
        if ensemble["temperature"] is not None:
            rule += f", temperature {ensemble['temperature']:g}"
        views += f", an ensemble of {len(config.member_names)} teachers ({rule})"
    return f"{views} ({what}, {config.num_shards} shard(s) per epoch)"


if __name__ == "__main__":
    # The command says what it did (each process its share of the shards); main() called from Python leaves logging.
    std_logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    std_logging.getLogger("hfkd").setLevel(std_logging.INFO)
    main()
