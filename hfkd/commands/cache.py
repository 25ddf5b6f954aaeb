"""`hfkd cache`: run the teacher once, store its outputs per augmented view, train without it.

    hfkd cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10
    accelerate launch -m hfkd cache ...          # the same, split over every process of every machine
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

The teacher and data flags are `hfkd distill`'s own fields (`CacheTeacherArguments` and `CacheDataArguments`, taken
from `DistillationArguments` and `DataArguments`), so each means the same in both commands.
`--teacher_ensemble_temperature` unset is the loss's temperature in both; a cache is built without a loss, so unset
it averages at 1 (a training run whose loss works at another temperature says so). Pass the temperature of the loss
you will train with (4 for KD) for the exact average that run would take of live teachers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser

from hfkd.commands.arguments import DataArguments, check_local_data, shared_arguments
from hfkd.commands.cli import OneLineErrors
from hfkd.commands.parser import HelpFormatter
from hfkd.data.datasets import detect_columns, load_image_dataset
from hfkd.data.transforms import image_config_for_model
from hfkd.models.loading import load_image_classifier, load_image_processor, resolve_model_name
from hfkd.teachers.base import teacher_record
from hfkd.teachers.cache.build import CacheTeacher, build_teacher_cache, check_cache_teachers
from hfkd.teachers.cache.replay import _DecodedImages
from hfkd.teachers.cache.store import CACHE_CONFIG, CacheConfig, content_sha256, rows_sha256
from hfkd.teachers.combine import check_ensemble_arguments
from hfkd.training.arguments import DistillationArguments
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import neutral_name

# What the cache is built from, the teacher (or ensemble) and the data: `hfkd distill`'s own fields.
CacheTeacherArguments = shared_arguments(
    "CacheTeacherArguments",
    {DistillationArguments: ("teacher_model_name_or_path", "teacher_model_revision", "teacher_weights",
                             "teacher_ensemble", "teacher_ensemble_temperature")},
    required=("teacher_model_name_or_path",),
    metadata={
        # `--teacher A --teacher B` and `--teacher A B` both list an ensemble's members.
        "teacher_model_name_or_path": {"action": "extend", "nargs": "+", "metavar": "MODEL"},
        "teacher_model_revision": {"aliases": ["--teacher_revision"], "metavar": "REVISION"},  # the earlier spelling
        "teacher_weights": {"metavar": "WEIGHT"},
        "teacher_ensemble_temperature": {"metavar": "T"},
    },
    group="teacher (as hfkd distill takes it)",
)  # fmt: skip
CacheDataArguments = shared_arguments(
    "CacheDataArguments",
    {DataArguments: ("dataset", "dataset_config", "train_split", "eval_split", "image_column", "label_column",
                     "max_train_samples")},
    required=("dataset",),
    metadata={
        "dataset": {"metavar": "DATA"}, "dataset_config": {"metavar": "NAME"}, "train_split": {"metavar": "SPLIT"},
        "eval_split": {"metavar": "SPLIT"}, "image_column": {"metavar": "COLUMN"},
        "label_column": {"metavar": "COLUMN"}, "max_train_samples": {"metavar": "N"},
    },
    group="data (as hfkd distill takes it)",
)  # fmt: skip


@dataclass
class CacheArguments:
    """What only `hfkd cache` takes: where the cache goes, and what it holds of which views."""

    _argument_group_name = "cache"

    output_dir: str = field(
        metadata={"help": "The cache folder (an interrupted build there is resumed).", "metavar": "DIR"}
    )
    epochs: int = field(
        default=1,
        metadata={"help": "Epochs of views to cache (training cycles over them); default 1.", "metavar": "N"},
    )
    top_k: int = field(
        default=10,
        metadata={"help": "Teacher probabilities kept per view (0: the full logits); default 10.", "metavar": "K"},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the views and of the data selection; default 0.", "metavar": "SEED"}
    )
    batch_size: int = field(default=64, metadata={"help": "The teacher's batch size; default 64.", "metavar": "N"})
    shard_size: int = field(
        default=10_000,
        metadata={"help": "Samples per shard file (the unit of work and of resuming); default 10000.", "metavar": "N"},
    )
    use_cpu: bool = field(
        default=False,
        metadata={
            "help": "Run on the CPU even with a GPU; under `accelerate launch` on machines without GPUs, this makes "
            "the processes one CPU (gloo) group that shares the work."
        },
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.top_k < 0:
            raise UsageError(f"--top_k must be >= 0 (0: the full logits), got {self.top_k}.")


class _Parser(OneLineErrors, HfArgumentParser):
    pass


DESCRIPTION = """Run a teacher (or an ensemble) once over a training set's augmented views (FKD-style) and store
its outputs, for training without it (hfkd distill --teacher_cache_dir DIR). Under accelerate launch every process
builds its share of the shards; the same command run again finishes an interrupted build.

  hfkd cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10
  accelerate launch --multi_gpu --num_processes <GPUs> -m hfkd cache ...      # one share per process
  hfkd cache --teacher A --teacher B --teacher_weights 0.6 0.4 ...            # an ensemble's outputs"""


EPILOG = """--teacher_ensemble_temperature unset is the loss's temperature when training; a cache is built without
a loss, so 1. Pass the temperature of the loss you will train with (4 for KD) for its exact average of the teachers."""


def build_parser() -> HfArgumentParser:
    return _Parser(
        (CacheTeacherArguments, CacheDataArguments, CacheArguments),
        prog="hfkd cache",
        usage="%(prog)s --teacher MODEL [--teacher MODEL ...] --dataset DATA --output_dir DIR [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=lambda prog: HelpFormatter(prog, max_help_position=38, width=119),
    )


def parse_args(argv: list[str] | None = None) -> tuple[Any, Any, CacheArguments]:
    """(the teacher, the data, the cache's own settings); an ensemble's settings are checked here."""
    parser = build_parser()
    teacher, data, cache, rest = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    check_ensemble_arguments(
        teacher.teacher_model_name_or_path, teacher.teacher_weights, teacher.teacher_ensemble,
        teacher.teacher_ensemble_temperature, None,
    )  # fmt: skip
    check_local_data("dataset", data.dataset)
    return teacher, data, cache


def _load_teacher(name: str, revision: str) -> CacheTeacher:
    spec = resolve_model_name(name, revision=revision)
    model = load_image_classifier(spec)
    image_config = image_config_for_model(model, load_image_processor(spec))
    info = teacher_record(name, revision)
    return CacheTeacher(
        model, name, image_config.size, image_config.mean, image_config.std, image_config.num_channels, info
    )


def _process_state(use_cpu: bool) -> Any:
    """Accelerate's view of the processes; refused when `accelerate launch` started several that do not form one
    group (each would build every shard)."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise UsageError(
            f"This build was launched as {launched} processes, but Accelerate runs {state.num_processes} (each would "
            "build every shard). Without GPUs, add --use_cpu so that the processes share the work over CPU."
        )
    return state


def _training_set(data_args: Any, seed: int, state: Any) -> tuple[Any, str, str | None, dict[str, Any]]:
    """(the selected training images, their image and label columns, the selected rows of both splits)."""
    with state.local_main_process_first():  # one process per machine fills the `datasets` cache
        dataset = load_image_dataset(
            data_args.dataset,
            config_name=data_args.dataset_config,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            max_train_samples=data_args.max_train_samples,
            seed=seed,
        )
    train = dataset["train"]
    image_column, label_column = detect_columns(train, data_args.image_column, data_args.label_column)
    return train, image_column, label_column, dataset.rows


def _data_record(
    data_args: Any, train: Any, rows: dict[str, Any], image_column: str, label_column: str | None
) -> dict[str, Any]:
    """What the cache records of its data, for training to check that it gets the same images."""
    return {
        "dataset": neutral_name(data_args.dataset),
        "config": data_args.dataset_config,
        "train_split": rows["train_split"],
        "eval_split": rows["eval_split"],
        "num_rows": len(train),
        "rows_sha256": rows_sha256(rows["train"]),
        "content_sha256": content_sha256(train, image_column, label_column),
    }


def main(argv: list[str] | None = None) -> CacheConfig:
    """`hfkd cache --teacher ... --dataset ... --output_dir ...`: build a teacher cache."""
    teacher, data_args, args = parse_args(argv)
    if os.path.exists(os.path.join(args.output_dir, CACHE_CONFIG)):
        raise UsageError(f"{args.output_dir!r} already holds a teacher cache; choose another --output_dir.")
    state = _process_state(args.use_cpu)
    # Every teacher is loaded, and their label spaces compared, before any data is read or any teacher runs.
    teachers = [_load_teacher(name, teacher.teacher_model_revision) for name in teacher.teacher_model_name_or_path]
    check_cache_teachers(teachers)
    train, image_column, label_column, rows = _training_set(data_args, args.seed, state)
    channels = max(teacher.num_channels for teacher in teachers)
    temperature = teacher.teacher_ensemble_temperature
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
        data=_data_record(data_args, train, rows, image_column, label_column),
        selection={"train_rows": rows["train"], "eval_rows": rows["eval"]},
        process_index=state.process_index,
        num_processes=state.num_processes,
        barrier=state.wait_for_everyone,
        teacher_weights=teacher.teacher_weights,
        ensemble=teacher.teacher_ensemble,
        # Unset: the loss's temperature, as in training; the cache is built without a loss, so 1.
        ensemble_temperature=1.0 if temperature is None else temperature,
    )


def command(argv: list[str] | None = None) -> CacheConfig:
    """`hfkd cache` on the command line: `main`, saying what it does (each process its share of the shards)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    logging.getLogger("hfkd").setLevel(logging.INFO)
    return main(argv)
