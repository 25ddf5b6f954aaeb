"""The private members of transformers, argparse, torch and evaluate that hfkd overrides or calls: all of them, here.

Public API covers most of what hfkd needs (`loss_is_scaled_for_ga`, `call_model_init`, `get_batch_samples`,
`training_step`, `get_eval_dataloader`, `HfArgumentParser.parse_dict`, argparse's `set_defaults`, ...). What it does
not cover is in this module, each with the reason no public way exists, and `UPSTREAM` records every such member with
the signature it has in the versions `setup.cfg` allows. `tests/test_upstream_api.py` compares each entry with the
installed library, so that a release that renames or reshapes one fails there, by name, rather than in a user's run;
the same test reads the rest of hfkd and fails, naming file and line, on any private use of another library outside
this module.

The Trainer's private methods are overridden by `TrainerInternals`, a mixin placed right before `Trainer` among
`DistillationTrainer`'s bases; each override only calls a public hook of the trainer (`write_model`,
`load_checkpoint`, ...), and the functions below give those hooks the Trainer's own implementation.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn
from transformers import HfArgumentParser, Trainer

INSTANCE_ATTRIBUTE = "instance attribute"
"""An `UPSTREAM` value: an attribute the library sets on its instances, which hfkd reads or sets."""

READ_BY_UPSTREAM = "read by the library"
"""An `UPSTREAM` value: a name the library's code reads from the objects it is given, which hfkd sets on its own
objects (or reads from a user's, as the library would)."""

UPSTREAM: dict[tuple[str, str], str] = {
    # (owner, member): the member's signature without annotations, or INSTANCE_ATTRIBUTE, or READ_BY_UPSTREAM.
    # Trainer.train calls these with no public hook between; see TrainerInternals for why each is needed.
    ("transformers.Trainer", "_save_checkpoint"): "(self, model, trial)",
    ("transformers.Trainer", "_save"): "(self, output_dir=None, state_dict=None)",
    ("transformers.Trainer", "_load_from_checkpoint"): "(self, resume_from_checkpoint, model=None)",
    ("transformers.Trainer", "_load_best_model"): "(self)",
    ("transformers.Trainer", "_set_signature_columns_if_needed"): "(self)",
    ("transformers.Trainer", "_signature_columns"): INSTANCE_ATTRIBUTE,
    ("transformers.Trainer", "_remove_unused_columns"): "(self, dataset, description=None)",
    ("transformers.Trainer", "_get_output_dir"): "(self, trial)",
    # The training sampler: the Trainer's get_train_dataloader takes it from here, with no public hook.
    ("transformers.Trainer", "_get_train_sampler"): "(self, train_dataset=None)",
    # A streamed training set's dataloader is built by hfkd (hfkd.training.streaming), as the Trainer would build it.
    ("transformers.Trainer", "_get_collator_with_removed_columns"): "(self, data_collator, description=None)",
    ("transformers.Trainer", "_train_batch_size"): INSTANCE_ATTRIBUTE,
    # HfkdParser places each field in a help group of its own choosing (hfkd.commands.parser).
    ("transformers.HfArgumentParser", "_parse_dataclass_field"): "(parser, field)",
    ("transformers.HfArgumentParser", "_argument_group_name"): READ_BY_UPSTREAM,
    ("argparse.ArgumentParser", "_actions"): INSTANCE_ATTRIBUTE,
    ("argparse._ArgumentGroup", "_group_actions"): INSTANCE_ATTRIBUTE,
    ("argparse.HelpFormatter", "_format_action_invocation"): "(self, action)",
    # DDP's only way to leave a module's parameters or buffers out of its synchronisation.
    ("torch.nn.parallel.DistributedDataParallel", "_ddp_params_and_buffers_to_ignore"): READ_BY_UPSTREAM,
    # The two methods evaluate's documentation tells a metric script to define (hfkd/metrics/top_k_accuracy).
    ("evaluate.Metric", "_info"): "(self)",
    ("evaluate.Metric", "_compute"): "(self, *, predictions=None, references=None, **kwargs)",
    # What transformers' custom-model documentation tells a PreTrainedModel subclass to define (hfkd.models.smp and
    # hfkd.models.torchvision_detection: smp, timm and torchvision initialise their own modules, which the default
    # would overwrite, pretrained weights included).
    ("transformers.PreTrainedModel", "_init_weights"): "(self, module)",
}


DOCUMENTED_OVERRIDES = {
    "hfkd/metrics/top_k_accuracy/top_k_accuracy.py": {"_info", "_compute"},
    "hfkd/models/smp.py": {"_init_weights"},
    "hfkd/models/torchvision_detection.py": {"_init_weights"},
}
"""Private members that a library's documentation tells its users to define, where hfkd defines them (outside this
module: evaluate loads a metric script by its path; a model's initialisation belongs to its class)."""


# ----------------------------------------------------------------------------------------------------- the Trainer


class TrainerInternals:
    """The `Trainer` methods that `DistillationTrainer` overrides though they are private, each reduced to a call of
    a public hook of the trainer:

    - `_save_checkpoint`: the Trainer rotates old checkpoints out at its end, before every process has finished
      writing its part of the new one; no public hook runs in between. hfkd defers the rotation (the Trainer reads
      `save_total_limit` there) to `finish_checkpoint`, once the checkpoint is complete.
    - `_save`: where `save_model` writes, after it gathered a sharded model's weights (ZeRO-3, FSDP) into
      `state_dict`; hfkd writes the bare student and the loss's parameters (`write_model`).
    - `_load_from_checkpoint`, `_load_best_model`: the Trainer loads a checkpoint's weights into its model, which
      for the student module (keys `student.`, `distill_loss.`) would load nothing (`load_checkpoint`,
      `load_best_model`).
    - `_set_signature_columns_if_needed`, `_remove_unused_columns`: which dataset columns a batch keeps, decided
      from the model's forward signature, which for the student module names none of them (`batch_columns`,
      `keeps_all_columns`).
    - `_get_train_sampler`: the order of the training samples, which copies of each image per epoch place as DeiT's
      repeated augmentation does (`train_sampler`; None keeps the Trainer's).
    """

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        limit = self.args.save_total_limit
        with self.writing_checkpoint():
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
        self.finish_checkpoint(self._get_output_dir(trial=trial), limit)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.write_model(output_dir if output_dir is not None else self.args.output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        self.load_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        self.load_best_model()

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(self.batch_columns())

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        if self.keeps_all_columns(dataset):
            return dataset
        return super()._remove_unused_columns(dataset, description)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)


def trainer_save(trainer: Trainer, output_dir: str, state_dict: dict | None = None) -> None:
    """`Trainer._save`: the Trainer's own way of writing its model into `output_dir`."""
    Trainer._save(trainer, output_dir, state_dict=state_dict)


def trainer_load_checkpoint(trainer: Trainer, folder: str, model: nn.Module | None = None) -> None:
    """`Trainer._load_from_checkpoint`: the Trainer's own loading of a checkpoint's weights into `model`."""
    Trainer._load_from_checkpoint(trainer, folder, model)


def trainer_load_best_model(trainer: Trainer) -> None:
    """`Trainer._load_best_model`: the Trainer's own loading of the best checkpoint."""
    Trainer._load_best_model(trainer)


def train_batch_size(trainer: Trainer) -> int:
    """The batch size the Trainer's training loop uses now (`auto_find_batch_size` may have lowered it)."""
    return trainer._train_batch_size


def collator_without_unused_columns(trainer: Trainer, collator: Callable, description: str) -> Callable:
    """`collator`, dropping the columns the Trainer would drop from a dataset it cannot edit (a stream)."""
    return trainer._get_collator_with_removed_columns(collator, description=description)


# ----------------------------------------------------------------------------------------------------- torch


def ignore_in_ddp(module: nn.Module, names: list[str]) -> None:
    """Leave `module`'s parameters and buffers `names` (qualified names) out of DDP's synchronisation."""
    module._ddp_params_and_buffers_to_ignore = list(names)


# ----------------------------------------------------------------------------------------------------- argparse


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of `parser` (argparse has no public list of them)."""
    return parser._actions


def order_group(group: Any, key: Callable[[argparse.Action], Any]) -> None:
    """List the actions of an argument group in `--help` in the order of `key`."""
    group._group_actions.sort(key=key)


def add_dataclass_field(container: Any, field: dataclasses.Field) -> None:
    """Add `field`'s flags to a parser or an argument group, as `HfArgumentParser` adds every field (whose public
    API adds a dataclass's fields to one group only)."""
    HfArgumentParser._parse_dataclass_field(container, field)


def dataclass_group_name(dtype: Any) -> str | None:
    """The help group a dataclass names for its fields, by `HfArgumentParser`'s convention."""
    return getattr(dtype, "_argument_group_name", None)


class HelpFormatterInternals(argparse.RawDescriptionHelpFormatter):
    """argparse's help formatter, whose way of spelling a flag in `--help` (`_format_action_invocation`, private)
    a subclass replaces by defining `format_invocation(action)`; `default_invocation` is argparse's own."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        return self.format_invocation(action)

    def format_invocation(self, action: argparse.Action) -> str:
        return self.default_invocation(action)

    def default_invocation(self, action: argparse.Action) -> str:
        return super()._format_action_invocation(action)
