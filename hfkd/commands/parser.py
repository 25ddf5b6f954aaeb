"""HfkdParser: HfArgumentParser plus `--config recipe.yaml` (dataclass defaults < recipe < command line), help
that a person reads (hfkd's groups first, the Trainer's many flags behind `--help-all`), and one-line errors.

Fields are placed in the groups of `GROUPS` by name (a dataclass's own `_argument_group_name` otherwise); the
TrainingArguments fields that `CORE_TRAINING_FLAGS` does not list are hidden from `--help` (they all still work).
An unknown flag names the closest known ones, a missing required flag says which, both in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, get_type_hints

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hfkd.utils import upstream
from hfkd.utils.errors import UsageError
from hfkd.utils.upstream import HelpFormatterInternals

# (title, description, field names): hfkd's own groups, in the order --help shows them.
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("models", "The student and the teacher.", (
        "student_model_name_or_path", "student_revision", "student_pretrained", "ignore_mismatched_sizes",
        "drop_path_rate",
        "teacher_model_name_or_path", "teacher_model_revision", "teacher_pretrained", "teacher_model_init_kwargs",
        "teacher_label_map", "teacher_cache_dir", "teacher_weights", "teacher_ensemble",
        "teacher_ensemble_temperature", "teacher_features_from", "distill_task", "trust_remote_code", "cache_dir",
    )),
    ("loss", "The distillation loss and its weights.", (
        "distill_loss", "distill_loss_kwargs", "distill_ce_weight", "distill_weight", "distill_logits_size",
    )),
    ("data", "What to train and evaluate on, and how images are prepared.", (
        "dataset", "dataset_config", "train_dir", "validation_dir", "train_split", "eval_split", "image_column",
        "label_column", "image_size", "teacher_image_size", "teacher_input", "interpolation", "image_mean",
        "image_std",
        "max_train_samples", "max_eval_samples", "train_augment",
        "rand_augment", "random_erasing", "distill_mixup", "distill_cutmix",
        "distill_views_per_image", "distill_view_augments", "distill_view_placement",
        "labelled_samples", "skip_unreadable", "streaming", "shuffle_buffer_size",
        "crop_size", "scale_range", "scale_step", "reduce_labels", "ignore_index", "id2label",
    )),
    ("recipe and optimisation", "A recipe file, and what the papers' training code does beyond the Trainer.", (
        "config", "distill_lr_milestones", "distill_lr_gamma", "distill_lr_decay_epochs", "distill_lr_warmup_epochs",
        "distill_lr_warmup_lr", "distill_lr_milestones_unit",
        "distill_decay_all_parameters", "distill_no_decay_1d",
        "distill_timm_optimizer", "distill_timm_optimizer_kwargs", "distill_ema", "distill_ema_decay",
        "distill_ema_warmup", "distill_nonfinite", "distill_max_skipped_steps", "distill_channels_last",
        "teacher_compile", "teacher_compile_backend", "distill_sync_bn",
    )),
    ("output", "Where results go, and what the run does besides training.", (
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "do_train", "do_eval", "evaluate_teacher",
        "baseline_metrics", "push_to_hub", "hub_model_id", "hub_token", "smoke", "smoke_image_size",
        "smoke_num_labels",
    )),
)  # fmt: skip


# Placeholders in --help (argparse's default repeats the field name in capitals).
METAVARS = {
    "student_model_name_or_path": "MODEL", "teacher_model_name_or_path": "MODEL", "dataset": "DATA",
    "distill_loss": "KEY", "output_dir": "DIR", "teacher_cache_dir": "DIR", "train_dir": "DIR",
    "validation_dir": "DIR", "cache_dir": "DIR", "resume_from_checkpoint": "CHECKPOINT", "image_size": "PIXELS",
    "teacher_image_size": "PIXELS", "distill_loss_kwargs": "JSON", "teacher_model_init_kwargs": "JSON",
    "distill_timm_optimizer_kwargs": "JSON", "teacher_label_map": "JSON", "baseline_metrics": "JSON",
    "teacher_weights": "WEIGHT", "teacher_ensemble_temperature": "T", "teacher_features_from": "TEACHER",
    "shuffle_buffer_size": "ROWS",
}  # fmt: skip


# TrainingArguments flags whose upstream help does not say what this script does with them.
HELP = {
    "do_train": "Train. With neither --do_train nor --do_eval the script trains and evaluates; with --do_eval "
    "alone it evaluates the --student (a saved student) and the teacher, without training.",
    "do_eval": "Evaluate the student (and the teacher). Alone: evaluate a saved --student without training.",
    "resume_from_checkpoint": "A checkpoint folder, or 'latest' (or True): the newest complete checkpoint of "
    "--output_dir. Re-running the same command into a folder with an unfinished run resumes on its own.",
    "output_dir": "Where the student, its card, metrics and checkpoints are written.",
    # Shorter than upstream's, to keep --help a page.
    "max_steps": "Total optimiser steps; overrides num_train_epochs (needed with --streaming).",
    "lr_scheduler_type": "The Trainer's lr schedule (linear, cosine, constant, ...; see SchedulerType).",
    "weight_decay": "Weight decay; the Trainer exempts biases and LayerNorm weights (see --distill_no_decay_1d).",
    "optim_args": "Extra arguments of some optimisers (AnyPrecisionAdamW, AdEMAMix, GaLore).",
    "gradient_accumulation_steps": "Batches per optimiser step (total batch = per-device batch x devices x this).",
    "bf16": "bfloat16 mixed precision (preferred over fp16 where the hardware has it).",
    "fp16": "float16 mixed precision.",
    "logging_steps": "Log every this many steps (a float below 1: a share of the run).",
    "report_to": "Where logs go: tensorboard, wandb, ..., 'all' or 'none'.",
    "save_steps": "Save a checkpoint every this many steps (a float below 1: a share of the run).",
    "save_total_limit": "Checkpoints to keep (older ones are deleted; the best is kept with load_best_model_at_end).",
    "data_seed": "Seed of the data sampler and augmentation (default: --seed).",
    "use_cpu": "Run on the CPU even when an accelerator is available.",
    "dataloader_num_workers": "Data-loading processes (0: in the main process).",
    "hub_token": "Token for --push_to_hub (default: the one `hf auth login` saved).",
}


# Flags of timm's train.py and of other tools, and what they are called here.
KNOWN_ELSEWHERE = {
    "--lr": "--learning_rate",
    "--epochs": "--num_train_epochs",
    "-b": "--per_device_train_batch_size",
    "--batch-size": "--per_device_train_batch_size",
    "--batch_size": "--per_device_train_batch_size",
    "--model": "--student",
    "--kd-model-name": "--teacher",
    "--teacher-model": "--teacher",
    "--kd-temperature": "--loss_kwargs '{\"temperature\": T}'",
    "--temperature": "--loss_kwargs '{\"temperature\": T}'",
    "--data-dir": "--dataset",
    "--data_dir": "--dataset",
    "--output": "--output_dir",
    "--opt": "--optim or --distill_timm_optimizer",
    "--weight-decay": "--weight_decay",
    "--model-ema": "--distill_ema",
    "--model-ema-decay": "--distill_ema_decay",
    "--amp": "--bf16 (or --fp16)",
    "--img-size": "--image_size",
    "--aa": "--rand_augment",
    "--reprob": "--random_erasing",
    "--drop-path": "--drop_path_rate (or --drop_path)",
    "--pretrained": "--student_pretrained",
    "--workers": "--dataloader_num_workers",
    "-j": "--dataloader_num_workers",
    "--resume": "--resume_from_checkpoint",
    "--repeated-aug": "--views_per_image 3 --view_placement repeated",
    "--repeated_aug": "--views_per_image 3 --view_placement repeated",
}


TRAINING_GROUP = "training (transformers TrainingArguments)"


# The Trainer flags --help shows; `--help-all` shows every one.
CORE_TRAINING_FLAGS = frozenset(
    "num_train_epochs max_steps learning_rate per_device_train_batch_size per_device_eval_batch_size "
    "gradient_accumulation_steps optim optim_args weight_decay max_grad_norm lr_scheduler_type warmup_steps "
    "label_smoothing_factor bf16 fp16 seed data_seed eval_strategy save_strategy save_steps save_total_limit "
    "logging_steps report_to dataloader_num_workers use_cpu torch_compile".split()
)


# Flags (fields typed `list[str] | None`) that may be repeated, each occurrence adding values (`--teacher A --teacher
# B`, or `--teacher A B`): `merge_repeated` joins the occurrences before argparse, where the last would win.
REPEATABLE = frozenset({"teacher_model_name_or_path"})


def merge_repeated(argv: Sequence[str], options: set[str]) -> list[str]:
    """`argv` with every occurrence of a flag of `options` (the spellings of one flag) joined into the first:
    `--teacher A --lr 1 --teacher B` becomes `--teacher A B --lr 1`."""
    merged: list[str] = []
    values: list[str] | None = None
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        name, equals, inline = tokens[i].partition("=")
        if name not in options:
            merged.append(tokens[i])
            i += 1
            continue
        if values is None:
            values = []
            merged.append(name)
            at = len(merged)
        values.extend([inline] if equals else [])
        i += 1
        while i < len(tokens) and not tokens[i].startswith("-"):
            values.append(tokens[i])
            i += 1
    if values is not None:
        merged[at:at] = values
    return merged


class HelpFormatter(HelpFormatterInternals):
    """One spelling per flag (plus its aliases) and a short placeholder: `--student_model_name_or_path, --student
    VALUE`, not every hyphenated twin with the field name repeated in capitals."""

    def format_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return self.default_invocation(action)
        options = [o for o in action.option_strings if not (o.startswith("--") and "-" in o[2:])]
        if action.nargs == 0:
            return ", ".join(options)
        if action.choices and len(", ".join(map(str, action.choices))) <= 40:
            value = "{" + ",".join(map(str, action.choices)) + "}"
        else:
            value = "[BOOL]" if action.nargs == "?" and action.const is True else action.metavar or "VALUE"
        return f"{', '.join(options)} {value}"


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config, rest, it = None, [], iter(argv)
    for token in it:
        if token == "--config":
            config = next(it, None)
            if config is None:
                raise UsageError("`--config` needs a path to a recipe YAML file, e.g. `--config recipes/x.yaml`.")
        elif token.startswith("--config="):
            config = token.split("=", 1)[1]
        else:
            rest.append(token)
    return config, rest


class HfkdParser(HfArgumentParser):
    """An `HfArgumentParser` whose `parse(argv)` also reads a flat recipe given with `--config PATH`.

    The recipe is read with `yaml.safe_load`; its keys are dataclass field names and its values become the
    parser's defaults, so a flag on the command line still wins. An unknown key is an error that names the key,
    close matches and the recipe. Mappings (for `distill_loss_kwargs` and similar fields) are passed on as JSON.

    Args:
        dataclass_types: the argument dataclasses.
        show_all (`bool`, *optional*, defaults to `False`): list every TrainingArguments flag in `--help`.
        kwargs: `argparse.ArgumentParser` arguments (`prog`, `description`, `epilog`).
    """

    def __init__(self, dataclass_types: Any, *, show_all: bool = False, **kwargs: Any) -> None:
        self.show_all = show_all
        kwargs.setdefault("formatter_class", lambda prog: HelpFormatter(prog, max_help_position=38, width=119))
        # No abbreviations: `--lr` must not silently mean one of several flags; unknown flags get suggestions.
        kwargs.setdefault("allow_abbrev", False)
        self._routes: dict[str, Any] = {}
        self._repeatable_options: set[str] = set()
        # Groups must exist before the fields are added: argparse lists them in creation order.
        super().__init__(None, **kwargs)
        for title, description, names in GROUPS:
            group = self.add_argument_group(title, description)
            self._routes.update(dict.fromkeys(names, group))
        self._training_group = self.add_argument_group(
            TRAINING_GROUP,
            "Every TrainingArguments flag works."
            + ("" if show_all else " The most used are listed; --help-all lists all of them."),
        )
        recipe_help = (
            "A recipe: flat YAML of these flags (without dashes), used as defaults that the command line "
            "overrides; see recipes/README.md."
        )
        # Read by `parse` before argparse (SUPPRESS: no `config` attribute in the parsed namespace).
        self._routes["config"].add_argument(
            "--config", metavar="RECIPE.yaml", help=recipe_help, default=argparse.SUPPRESS
        )
        self.dataclass_types = list(dataclass_types) if isinstance(dataclass_types, Sequence) else [dataclass_types]
        for dtype in self.dataclass_types:
            self._add_fields(dtype)
        for _, _, names in GROUPS:  # within a group, the order of GROUPS, whatever the dataclasses' order
            order = {name: i for i, name in enumerate(names)}
            upstream.order_group(self._routes[names[0]], key=lambda a, order=order: order.get(a.dest, len(order)))

    def _add_fields(self, dtype: Any) -> None:
        """Add the flags of `dtype`'s fields, each in its group of `GROUPS`, with this parser's help and metavars."""
        own = upstream.dataclass_group_name(dtype)
        fallback = self.add_argument_group(own) if own else self._training_group
        hints = get_type_hints(dtype)
        trainer_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        actions = upstream.parser_actions(self)
        for item in dataclasses.fields(dtype):
            if not item.init:
                continue
            item.type = hints[item.name]
            group = self._routes.get(item.name, fallback)
            count = len(actions)
            upstream.add_dataclass_field(group, item)
            hidden = group is self._training_group and item.name in trainer_fields
            for action in actions[count:]:
                if item.name in REPEATABLE:
                    self._repeatable_options.update(action.option_strings)
                if hidden and not self.show_all and item.name not in CORE_TRAINING_FLAGS:
                    action.help = argparse.SUPPRESS
                elif action.option_strings[0].startswith("--no_"):
                    # HfArgumentParser gives the `--no_x` complement the help of `--x`, which says the opposite.
                    action.help = f"Set {item.name} to False (the opposite of --{item.name})."
                else:
                    action.help = HELP.get(item.name, action.help)
                    action.metavar = METAVARS.get(item.name, action.metavar)

    def error(self, message: str) -> NoReturn:
        """One line on what is wrong and the fix, instead of argparse's usage dump."""
        if message.startswith("the following arguments are required:"):
            missing = []
            for spellings in message.split(":", 1)[1].strip().split(", "):
                names = [s for s in spellings.split("/") if not (s.startswith("--") and "-" in s[2:])]
                missing.append(names[0] + (f" (or {', '.join(names[1:])})" if len(names) > 1 else ""))
            message = f"missing {' and '.join(missing)}: pass it on the command line or in the --config recipe"
        self.exit(2, f"{self.prog}: error: {message}. (--help lists the flags.)\n")

    def field_names(self) -> set[str]:
        return {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}

    def read_recipe(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"Recipe {str(path)!r} does not exist. Pass the path of a YAML file to `--config`.")
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise UsageError(f"Recipe {str(path)!r} must be a flat YAML mapping of argument names to values.")
        known = self.field_names()
        unknown = sorted(set(data) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=2, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
            raise UsageError(
                f"Recipe {str(path)!r} has unknown key(s): {', '.join(hints)}. Keys are argument names "
                "as on the command line, without the leading dashes."
            )
        return {key: json.dumps(value) if isinstance(value, dict) else value for key, value in data.items()}

    def required_fields(self) -> set[str]:
        """The fields without a default, whose flag argparse requires on the command line."""
        return {
            f.name
            for dtype in self.dataclass_types
            for f in dataclasses.fields(dtype)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }

    def _unknown_flags(self, remaining: list[str]) -> NoReturn:
        flags = [token for token in remaining if token.startswith("-")] or remaining
        known = [option for action in upstream.parser_actions(self) for option in action.option_strings]
        hints = []
        known = [option for option in known if not (option.startswith("--") and "-" in option[2:])]
        for flag in flags:
            name = flag.split("=", 1)[0]
            close = [KNOWN_ELSEWHERE[name]] if name in KNOWN_ELSEWHERE else []
            close = close or difflib.get_close_matches(name.replace("-", "_"), known, n=2, cutoff=0.6)
            hints.append(flag + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        self.error(f"unknown argument(s): {', '.join(hints)}")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse `argv` (default `sys.argv[1:]`) into the dataclasses, with `--config` recipe values as defaults.

        Returns the dataclass instances followed by the recipe path (`None` without `--config`).
        """
        config, rest = _split_config_flag(sys.argv[1:] if argv is None else argv)
        rest = merge_repeated(rest, self._repeatable_options)
        if config is not None:
            recipe = self.read_recipe(config)
            self.set_defaults(**recipe)
            # argparse wants a required flag on the command line whatever its default: the recipe's values of required
            # fields go first on it, where the same flag given after them overrides them.
            rest = [*_as_flags({k: v for k, v in recipe.items() if k in self.required_fields()}), *rest]
        namespace, remaining = self.parse_known_args(args=rest)
        if remaining:
            self._unknown_flags(remaining)  # before the dataclasses check their values: the flag may be the mistake
        return (*self.parse_dict(vars(namespace)), config)


def _as_flags(values: dict[str, Any]) -> list[str]:
    """Command-line tokens that set `values` (field name -> value, or list of values)."""
    tokens = []
    for name, value in values.items():
        tokens += [f"--{name}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return tokens
