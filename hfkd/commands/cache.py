"""`hfkd cache`: run the teacher once, store its outputs per augmented view, train without it.

    hfkd cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10
    accelerate launch -m hfkd.teacher_cache ...          # the same, split over every process of every machine
    hfkd cache --teacher A --teacher B --teacher_weights 0.7 0.3 ...   # an ensemble's outputs

As in FKD (Shen & Xing, *A Fast Knowledge Distillation Framework for Visual Recognition*, ECCV 2022), each epoch's
random crop and flip of every training image is drawn up front from a seed, the teacher sees exactly that view,
and the cache stores the view's parameters with the teacher's top-k probabilities (or its full logits). Training
with `--teacher_cache_dir cache/` replays the same crops for the student and never runs the teacher.

The work is cut into shards of `--shard_size` samples per epoch (`hfkd.teachers.cache.store` describes the layout)
and split over the processes of `accelerate launch` (on machines without GPUs add `--use_cpu`; the output folder
must be on a filesystem every machine sees). Each shard is written whole or not at all, so an interrupted build
resumes where it stopped when the same command runs again: the shards it verifies are kept, the others built again.
The cache is the same bytes whatever the number of processes that built it (`hfkd.teachers.cache.build`). Several
`--teacher` make an ensemble: each teacher preprocesses the shared crop its own way (size, mean, std),
`hfkd.teachers.combine.ensemble_logits` combines their logits and the cache stores the combination. The cache records
what it was built from, and training checks it.
"""

from __future__ import annotations

import argparse
import os

from hfkd.data.datasets import detect_columns, load_image_dataset
from hfkd.data.transforms import image_config_for_model
from hfkd.models.loading import load_image_classifier, load_image_processor, resolve_model_name
from hfkd.teachers.cache.build import CacheTeacher, build_teacher_cache, check_cache_teachers
from hfkd.teachers.cache.replay import _DecodedImages
from hfkd.teachers.cache.store import (
    CACHE_CONFIG,
    CacheConfig,
    content_sha256,
    rows_sha256,
)
from hfkd.teachers.combine import ENSEMBLE_MODES, check_ensemble_arguments
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path, neutral_name


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
        raise UsageError(f"{args.output_dir!r} already holds a teacher cache; choose another --output_dir.")
    for name in ("epochs", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    check_ensemble_arguments(
        args.teacher, args.teacher_weights, args.teacher_ensemble, args.teacher_ensemble_temperature, None
    )
    state = PartialState(cpu=args.use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise UsageError(
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
