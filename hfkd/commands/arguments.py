"""The argument groups of `hfkd distill` and their parser.

`ModelArguments` (which models), `DataArguments` (which data, prepared how), `RunArguments` (what the run does besides
training) and `hfkd.DistillationArguments` (the teacher, the loss, and every `TrainingArguments` flag), parsed by
`HfkdParser` with `--config recipe.yaml` defaults. Another command that takes some of these flags (`hfkd cache`: the
teacher and the data) takes the fields themselves, through `shared_arguments`, so that each is defined once.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import logging

from hfkd.commands.parser import HfkdParser
from hfkd.commands.smoke import smoke_argv
from hfkd.data.streaming import check_streaming_arguments
from hfkd.data.transforms import INTERPOLATIONS, check_rand_augment
from hfkd.training.arguments import DistillationArguments
from hfkd.utils import upstream
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which models to distil (the teacher: `--teacher`, among the distillation arguments)."""

    student_model_name_or_path: str = field(
        metadata={
            "help": "Student: Hub id, timm/... id, local folder, timm name or alias (resnet-18, ...).",
            "aliases": ["--student", "--model_name_or_path"],
        },
    )
    student_revision: str = field(default="main", metadata={"help": "Revision of the student checkpoint."})
    student_pretrained: bool = field(
        default=True, metadata={"help": "Start the student from its checkpoint's weights (False: random init)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={
            "help": "Give the student a new head when its checkpoint has another number of classes than the data "
            "(as transformers' examples do with this flag; on by default here). A teacher's head is never replaced."
        },
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={
            "help": "The student's stochastic depth rate (timm's --drop-path; config.drop_path_rate of Swin, "
            "ConvNeXt, ...; default: the model's own).",
            "aliases": ["--drop_path"],
        },
    )
    teacher_pretrained: bool = field(
        default=True,
        metadata={
            "help": "Load the teacher's weights (False: random init, the dataset's head; for debugging)."
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

    def __post_init__(self) -> None:
        rate = self.drop_path_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1):
            raise UsageError(f"--drop_path_rate must be in [0, 1) (Swin-T's recipe: 0.2), got {rate!r}.")


TEACHER_INPUTS = ("own", "student")


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to prepare it."""

    dataset: str = field(
        default="fashion-mnist",
        metadata={
            "help": "Hub dataset id, local imagefolder path, or embedded demo data (fashion-mnist, digits).",
            "aliases": ["--dataset_name"],
        },
    )
    train_dir: str | None = field(
        default=None,
        metadata={"help": "An image folder of training images (<dir>/<class>/<image>), with --validation_dir."},
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "An image folder of evaluation images, with --train_dir."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split (default: validation, val or test, else a held-out part)."}
    )
    image_column: str | None = field(
        default=None,
        metadata={"help": "Image column (detected when unambiguous).", "aliases": ["--image_column_name"]},
    )
    label_column: str | None = field(
        default=None,
        metadata={"help": "Label column (detected when unambiguous).", "aliases": ["--label_column_name"]},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of the square images the student sees (default: its processor's or timm config's), e.g. "
            "32 for CIFAR; models with a fixed input size (ViT) keep theirs."
        },
    )
    teacher_image_size: int | None = field(
        default=None, metadata={"help": "The teacher's image side (default: its own config's); the crop is shared."}
    )
    interpolation: str | None = field(
        default=None,
        metadata={
            "help": "The student's resampling: bilinear, bicubic or nearest (timm's --interpolation; default: its "
            "config's), for resize, crop and RandAugment."
        },
    )
    image_mean: list[float] | None = field(
        default=None,
        metadata={"help": "The student's normalisation mean, 1 or 3 values (timm's --mean; default: its config's).",
                  "aliases": ["--mean"]},
    )
    image_std: list[float] | None = field(
        default=None,
        metadata={
            "help": "The student's normalisation std (timm's --std; default: its config's).", "aliases": ["--std"]
        },
    )
    teacher_input: str = field(
        default="own",
        metadata={
            "help": "The teacher's training pixels: 'own' (its preprocessing of the student's crop) or 'student' "
            "(the student's tensor, as DIST's and mdistiller's code feed it)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the eval set."})
    train_augment: str = field(
        default="auto",
        metadata={
            "help": "rrc, crop_flip (CIFAR), fixmatch (crop, flip, FixMatch's RandAugment + Cutout), none, or auto "
            "(crop_flip up to 64 px, else rrc)."
        },
    )
    rand_augment: str | None = field(
        default=None,
        metadata={"help": "timm's RandAugment after the crop, e.g. rand-m9-mstd0.5 (DIST's B2, timm's --aa)."},
    )
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of timm's random erasing, pixel mode (timm's --reprob)."}
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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the dataset (datasets.IterableDataset) instead of downloading and preparing it: each "
            "process reads its own shards, shuffled through a buffer; needs --max_steps (see the README)."
        },
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "With --streaming: rows in the shuffle buffer (per process)."}
    )

    crop_size: list[int] | None = field(
        default=None,
        metadata={
            "help": "Segmentation: the training crop, height width (DIST: 512 1024; default: --image_size square, "
            "else 512 512)."
        },
    )
    scale_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0],
        metadata={"help": "Segmentation: range of the random rescale before the crop (DIST, mmseg: 0.5 2.0)."},
    )
    scale_step: float | None = field(
        default=None,
        metadata={"help": "Segmentation: draw the rescale factor in steps of this (DIST: 0.1); default: uniformly."},
    )
    reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Segmentation: mask value 0 means unlabelled: ignore it and shift the other classes down by 1 "
            "(ADE20K; transformers' --do_reduce_labels).",
            "aliases": ["--do_reduce_labels"],
        },
    )
    ignore_index: int = field(
        default=255, metadata={"help": "Segmentation: the mask value of pixels no loss or metric counts."}
    )
    id2label: str | None = field(
        default=None,
        metadata={
            "help": "Segmentation and detection: the class names, a JSON file or string ({\"0\": \"road\", ...}); "
            "default: the dataset's, else the teacher's."
        },
    )
    shortest_edge: list[int] = field(
        default_factory=lambda: [800],
        metadata={
            "help": "Detection: the training images' shorter side, or several to draw from (multi-scale; mdistiller: "
            "640 672 704 736 768 800); evaluation takes the largest. --image_size N resizes to N x N instead."
        },
    )
    longest_edge: int = field(
        default=1333, metadata={"help": "Detection: the longer side's bound after the resize (DETR, mmdet: 1333)."}
    )

    def __post_init__(self) -> None:
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise UsageError(f"--crop_size takes two positive sides, height width (DIST: 512 1024): {self.crop_size}.")
        if not self.shortest_edge or min(self.shortest_edge) < 1 or self.longest_edge < 1:
            raise UsageError(
                f"--shortest_edge and --longest_edge take positive sides (800 and 1333), got {self.shortest_edge} and "
                f"{self.longest_edge}."
            )
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise UsageError(f"--scale_range takes low high with 0 < low <= high (0.5 2.0), got {self.scale_range}.")
        if self.interpolation is not None:
            self.interpolation = str(self.interpolation).lower()
            if self.interpolation not in INTERPOLATIONS:
                raise UsageError(
                    f"--interpolation must be one of {', '.join(INTERPOLATIONS)} (DIST: bilinear), got "
                    f"{self.interpolation!r}."
                )
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values is not None and (len(values) not in (1, 3) or (name == "image_std" and 0 in values)):
                what = "1 or 3 non-zero values" if name == "image_std" else "1 or 3 values"
                raise UsageError(f"--{name} takes {what} (one per channel, or one for all), got {values!r}.")
        if self.teacher_input not in TEACHER_INPUTS:
            raise UsageError(f"--teacher_input must be 'own' or 'student', got {self.teacher_input!r}.")
        if self.teacher_input == "student" and self.teacher_image_size is not None:
            raise UsageError(
                f"--teacher_input student feeds the teacher the student's tensor, so --teacher_image_size "
                f"{self.teacher_image_size} cannot apply. Drop one of the two."
            )
        check_rand_augment(self.rand_augment)
        erasing = self.random_erasing
        if isinstance(erasing, bool) or not isinstance(erasing, (int, float)) or not 0.0 <= erasing <= 1.0:
            raise UsageError(f"--random_erasing must be a probability in [0, 1] (DIST's B2: 0.2), got {erasing!r}.")


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
        metadata={"help": "eval_results.json of a CE-only student run, for the model card's comparison."},
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
    # (--do_train, --do_eval) as given on the command line or in the recipe, None where not given. Not the
    # TrainingArguments fields: transformers turns `do_eval` on by itself whenever `eval_strategy` is not "no".
    phases: tuple[bool | None, bool | None] = field(default=(None, None), init=False)


DESCRIPTION = """Distil an image classifier (the teacher) into a smaller one (the student) with hfkd.

  # distil a Hub teacher into a student, with DIST
  {launch} --teacher microsoft/swin-large --student resnet-50 \\
      --loss dist --dataset imagenet-1k --output_dir runs/swinl-r50-dist --bf16

  # reproduce a paper's table cell from its recipe (flags still override it)
  {launch} --config recipes/cifar100/dkd/resnet8x4_from_resnet32x4.yaml \\
      --output_dir runs/dkd-r8x4

  # cross-entropy only: fine-tune a teacher on your labels, or train the CE baseline of a student
  {run} --student resnet-50 --loss ce --dataset <data> --output_dir runs/teacher

Models: a Hub id, a timm/... id, a local folder, a timm name or an alias (resnet-18, swin-large, resnet8x4, ...).
Data: a Hub dataset id, a local image folder (<dir>/<class>/<image>), or the embedded fashion-mnist / digits."""


EPILOG = "--help-all lists every TrainingArguments flag. A flag's value can also come from --config recipe.yaml."


COMMAND = "hfkd distill"


def build_parser(show_all: bool = False, prog: str = COMMAND) -> HfkdParser:
    """The parser of `hfkd distill` (`prog`: the program the help and errors name, e.g. `run_image_distill.py`)."""
    if prog == COMMAND:
        launch, run = f"accelerate launch -m {COMMAND}", COMMAND
    else:  # the example script, or a copy of it
        launch, run = f"accelerate launch examples/{prog}", f"python examples/{prog}"
    return HfkdParser(
        (ModelArguments, DataArguments, RunArguments, DistillationArguments),
        show_all=show_all,
        prog=prog,
        usage="%(prog)s --student MODEL [--teacher MODEL] [--loss KEY] [--dataset DATA] --output_dir DIR [options]",
        description=DESCRIPTION.format(launch=launch, run=run),
        epilog=EPILOG,
    )


def parse_args(argv: list[str] | None, prog: str = COMMAND) -> tuple[Any, ...]:
    """(model_args, data_args, run_args, training_args, recipe path). `--smoke` adds its overrides last.

    Every error is a `UsageError`, one line on the command line: a `ValueError` raised while the arguments are built
    (`TrainingArguments`' own checks: `--load_best_model_at_end` with strategies that differ, ...) is one too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        return build_parser(show_all=True, prog=prog).parse(["--help"])
    if "--smoke" in argv:
        argv = smoke_argv(argv)
    parser = build_parser(prog=prog)
    try:
        model_args, data_args, run_args, training_args, recipe = parser.parse(argv)
    except UsageError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from error
    actions = upstream.parser_actions(parser)
    explicit = {a.dest for a in actions if any(_given(option, argv) for option in a.option_strings)}
    explicit |= set(parser.read_recipe(recipe)) if recipe else set()
    scratch_learning_rate(model_args, training_args, explicit)
    run_args.phases = tuple(getattr(training_args, f) if f in explicit else None for f in ("do_train", "do_eval"))
    if training_args.teacher_cache_dir is not None and (data_args.rand_augment or data_args.random_erasing):
        raise UsageError(
            "--rand_augment / --random_erasing: a teacher cache (--teacher_cache_dir) replays the crops and flips its "
            "teacher saw, without them. Drop them, or train with the live teacher (drop --teacher_cache_dir)."
        )
    if training_args.mixes_batches and data_args.labelled_samples is not None:
        raise UsageError(
            "--mixup/--cutmix blend each sample's label with another's, and --labelled_samples leaves samples "
            "without one: drop one of the two."
        )
    if training_args.teacher_cache_dir is not None and data_args.teacher_input == "student":
        raise UsageError(
            "--teacher_input student: a teacher cache (--teacher_cache_dir) holds the outputs of the teacher's own "
            "views. Drop --teacher_input, or train with the live teacher (drop --teacher_cache_dir)."
        )
    if data_args.streaming:
        if run_args.smoke:
            raise UsageError("--smoke trains on small synthetic data, which is not streamed: drop --streaming.")
        check_streaming_arguments(training_args, data_args)
    if not run_args.smoke:  # smoke mode reads none of the data
        for flag in ("dataset", "train_dir", "validation_dir"):
            check_local_data(flag, getattr(data_args, flag))
    return model_args, data_args, run_args, training_args, recipe


def check_local_data(flag: str, path: str | None) -> None:
    """A local path (`/...`, `./...`, `~/...`) given for data that is not there is refused when the arguments are
    parsed, before the output folder or any model."""
    if path is not None and is_local_path(path) and not os.path.exists(os.path.expanduser(path)):
        raise UsageError(
            f"--{flag} {path!r} does not exist. Pass an image folder (<dir>/<class>/<image>), data files, a Hub "
            "dataset id, or the embedded fashion-mnist / digits."
        )


def _given(option: str, argv: list[str]) -> bool:
    return any(token == option or token.startswith(option + "=") for token in argv)


# transformers' default learning rate suits fine-tuning; a randomly initialised student learns next to nothing with it.
SCRATCH_LEARNING_RATES = {"sgd": 0.05}


SCRATCH_DEFAULT_LR = 1e-3


def scratch_learning_rate(model_args: ModelArguments, args: DistillationArguments, explicit: set[str]) -> None:
    """A student trained from scratch gets a learning rate that trains one (AdamW 1e-3, SGD 0.05) when none was
    given, instead of the Trainer's 5e-5 (meant for fine-tuning), and the log says so."""
    if model_args.student_pretrained or "learning_rate" in explicit:
        return
    optim = args.distill_timm_optimizer or str(getattr(args.optim, "value", args.optim))
    args.learning_rate = SCRATCH_LEARNING_RATES.get(optim, SCRATCH_DEFAULT_LR)
    logger.warning(
        f"The student is trained from scratch and no --learning_rate was given: using {args.learning_rate} with "
        f"{optim} (the Trainer's 5e-05 is meant for fine-tuning). Pass --learning_rate to choose."
    )


def shared_arguments(
    name: str,
    fields: dict[type, tuple[str, ...]],
    *,
    required: tuple[str, ...] = (),
    metadata: dict[str, dict[str, Any]] | None = None,
    group: str | None = None,
) -> type:
    """A dataclass of fields that another command defines (`{owner dataclass: field names}`): their type, default,
    help and aliases as the owner declares them, so that a flag two commands take is defined once. `hfkd cache`
    takes the teacher and data fields of `hfkd distill` this way.

    Args:
        name (`str`): the new dataclass's name.
        fields (`dict`): the owners and the names of the fields to take from each.
        required (`tuple[str, ...]`, *optional*): fields that this command requires (their default is dropped).
        metadata (`dict`, *optional*): per field, what this command adds to its metadata: `aliases` (added to the
            owner's), or argparse keywords such as `action`.
        group (`str`, *optional*): the title `--help` lists the fields under.
    """
    specs = []
    for owner, names in fields.items():
        hints = typing.get_type_hints(owner)
        for field_name in names:
            original = owner.__dataclass_fields__[field_name]
            extra = dict((metadata or {}).get(field_name, {}))
            aliases = [*original.metadata.get("aliases", []), *extra.pop("aliases", [])]
            meta = {**original.metadata, **extra, **({"aliases": aliases} if aliases else {})}
            if field_name in required:
                spec = field(metadata=meta)
            elif original.default_factory is not dataclasses.MISSING:
                spec = field(default_factory=original.default_factory, metadata=meta)
            else:
                spec = field(default=original.default, metadata=meta)
            specs.append((field_name, hints[field_name], spec))
    specs.sort(key=lambda spec: spec[0] not in required)  # a field without a default comes before those with one
    namespace = {"_argument_group_name": group} if group else {}
    return dataclasses.make_dataclass(name, specs, namespace=namespace)
