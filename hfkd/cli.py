"""The command line of `examples/run_image_distill.py`: its argument groups and their parser.

`ModelArguments` (which models), `DataArguments` (which data, prepared how), `RunArguments` (what the run does besides
training) and `hfkd.DistillationArguments` (the teacher, the loss, and every `TrainingArguments` flag), parsed by
`HfkdParser` with `--config recipe.yaml` defaults.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .arguments import DistillationArguments
from .parser import HfkdParser
from .smoke import smoke_argv


@dataclass
class ModelArguments:
    """Which models to distil (the teacher: `--teacher`, among the distillation arguments)."""

    student_model_name_or_path: str = field(
        metadata={
            "help": "Student: Hub id, timm/... id, local folder, timm name or alias (resnet-18, ...).",
            "aliases": ["--student"],
        },
    )
    student_revision: str = field(default="main", metadata={"help": "Revision of the student checkpoint."})
    student_pretrained: bool = field(
        default=True, metadata={"help": "Start the student from its checkpoint's weights (False: random init)."}
    )
    teacher_pretrained: bool = field(
        default=True,
        metadata={
            "help": "Load the teacher's weights (False: a random-init teacher with the dataset's head, for smoke "
            "tests and debugging)."
        },
    )
    teacher_label_map: str | None = field(
        default=None,
        metadata={
            "help": "JSON mapping of dataset class names to teacher class names (or indices), for a teacher "
            "trained on a superset of the dataset's classes."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (off by default)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for models and datasets."})


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to prepare it."""

    dataset: str = field(
        default="fashion-mnist",
        metadata={"help": "Hub dataset id, local imagefolder path, or embedded demo data (fashion-mnist, digits)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split (default: validation, val or test, else a held-out part)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when unambiguous)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when unambiguous)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the eval set."})
    train_augment: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: rrc (random resized crop + flip), crop_flip (pad-4 crop + flip, "
            "CIFAR), none, or auto (rrc, crop_flip for images of 64 px or less)."
        },
    )
    labelled_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep the labels of only this many (seeded) training images; the teacher's targets cover "
            "the rest. CE-only runs train on the labelled images alone."
        },
    )
    skip_unreadable: bool = field(
        default=False, metadata={"help": "Drop images that fail to decode (counted in the log) instead of failing."}
    )


@dataclass
class RunArguments:
    """What the run does besides training: the output folder, the teacher's evaluation, the card, smoke mode."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output folder that already holds a finished run."}
    )
    evaluate_teacher: bool = field(
        default=True, metadata={"help": "Also evaluate the teacher, for the results table of the model card."}
    )
    baseline_metrics: str | None = field(
        default=None,
        metadata={"help": "eval_results.json of a CE-only student run, shown in the model card next to this run."},
    )
    smoke: bool = field(
        default=False,
        metadata={
            "help": "Smoke test: 2 steps on synthetic data of the dataset's shape and class count, with random-"
            "init models, offline (checks a recipe's whole path without its data or weights)."
        },
    )
    smoke_image_size: int | None = field(default=None, metadata={"help": "Image size of the smoke data."})
    smoke_num_labels: int | None = field(default=None, metadata={"help": "Class count of the smoke data."})


def build_parser() -> HfkdParser:
    return HfkdParser((ModelArguments, DataArguments, RunArguments, DistillationArguments))


def parse_args(argv: list[str] | None) -> tuple[Any, ...]:
    """(model_args, data_args, run_args, training_args, recipe path). `--smoke` adds its overrides last."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = smoke_argv(argv)
    return build_parser().parse(argv)
