"""Saving and resuming for `DistillationTrainer`: what lands on disk is complete, finite and free of secrets.

A mixin of `hfkd.trainer.DistillationTrainer` (the two are the only modules that override `Trainer` internals):

- before any checkpoint, final model or card is written, no step since the last check was non-finite and every
  weight is finite (`hfkd.guards`);
- a checkpoint is marked complete once everything of it is written, and old ones are rotated out only then, so a
  kill leaves a complete checkpoint or a recognisably incomplete one; `resume_from_checkpoint` may be `True` or
  `"latest"`, which take the newest complete one;
- the student is saved bare (loadable with `AutoModelForImageClassification`), a loss's trainable parameters beside
  it in `distill_adapters.safetensors`, restored on resume and when the best model is loaded;
- with `distill_ema`, the final model is the student's weight average, and each checkpoint holds it too;
- `training_args.bin` never holds the Hub token.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging

from .guards import (
    check_finite_weights,
    latest_complete_checkpoint,
    mark_checkpoint_complete,
    resolve_checkpoint,
    rotate_complete_checkpoints,
)
from .local_names import neutral_name
from .timm_export import make_timm_loadable
from .wrapper import ADAPTERS_NAME, DistillationModule

logger = logging.get_logger(__name__)

DISTILL_CONFIG_NAME = "distill_config.json"
TRAINING_ARGS_NAME = "training_args.bin"


def save_training_args(args: Any, path: str) -> None:
    """`torch.save` of the arguments with every token field emptied and every absolute path reduced to its folder
    name (`hfkd.local_names`): the file is uploaded with the model."""
    args = copy.copy(args)
    for name, value in vars(args).items():
        if name.endswith("token") and isinstance(value, str):
            setattr(args, name, None)
        elif isinstance(value, str) and os.path.isabs(os.path.expanduser(value)):
            setattr(args, name, neutral_name(value))
    torch.save(args, path)


def share_like_other_files(folder: str) -> None:
    """Give files in `folder` that were written private (0600: transformers saves weights through a temporary file)
    the permissions the user's umask gives any new file, as the rest of the folder has."""
    mask = os.umask(0)
    os.umask(mask)
    for entry in os.scandir(folder):
        if entry.is_file() and not entry.stat().st_mode & 0o077:
            os.chmod(entry.path, 0o666 & ~mask)


class CheckpointMixin:
    """The saving and resuming overrides of `DistillationTrainer` (see the module docstring)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """`Trainer.train`, where `resume_from_checkpoint` may also be `True`, `"true"` or `"latest"`: the newest
        complete checkpoint of `output_dir` (incomplete ones, left by a killed run, are named and skipped)."""
        resume = resolve_checkpoint(self.args.output_dir, resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint=resume, **kwargs)
        except Exception as err:
            latest = latest_complete_checkpoint(self.args.output_dir)
            where = f"resume from {latest}" if latest else "no checkpoint was written yet"
            note = (
                f"Training stopped at step {self.state.global_step} of {self.state.max_steps}; {where} (the same "
                "command resumes from it, or pass --resume_from_checkpoint latest)."
            )
            logger.error(note)
            if hasattr(err, "add_note"):  # Python 3.11+: the note is printed with the traceback
                err.add_note(note)
            raise

    def _check_writable(self, what: str) -> None:
        """Before anything is written: no non-finite step since the last check, and finite weights."""
        self._guard.check(self.state.global_step)
        check_finite_weights(self.accelerator.unwrap_model(self.model), what)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._check_writable(f"checkpoint-{self.state.global_step}")
        # Old checkpoints are rotated out only once the new one is complete: a kill while it is written must leave
        # a complete one behind.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._saving_checkpoint = True  # a checkpoint holds the live weights (to resume from), and the EMA beside
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit, self._saving_checkpoint = limit, False
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.ema is not None and self.args.should_save:
            self.ema.save(folder)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_checkpoint_complete(folder)
            rotate_complete_checkpoints(run_dir, limit, keep=self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        wrapper = self.accelerator.unwrap_model(self.model)
        if isinstance(wrapper, DistillationModule):
            # The bare student, loadable with AutoModelForImageClassification; adapters beside it.
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                student_state = None
                if state_dict is not None:
                    student_state = {
                        k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")
                    }
                wrapper.student.save_pretrained(output_dir, state_dict=student_state)
                adapters = wrapper.adapter_state_dict()
                if adapters:
                    save_file(adapters, os.path.join(output_dir, ADAPTERS_NAME), metadata={"format": "pt"})
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
        else:
            super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            save_training_args(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            share_like_other_files(output_dir)
            with open(os.path.join(output_dir, DISTILL_CONFIG_NAME), "w", encoding="utf-8") as f:
                json.dump(self.distill_config(), f, indent=2, sort_keys=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.ema is not None:
            self.ema.load(resume_from_checkpoint)
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(wrapper, DistillationModule):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, wrapper.student)
        if not wrapper.adapter_state_dict():
            return
        path = os.path.join(resume_from_checkpoint, ADAPTERS_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"Checkpoint {resume_from_checkpoint!r} has no {ADAPTERS_NAME}, which loss "
                f"{self.args.distill_loss!r} needs to resume. Resume from a checkpoint of a run with this loss."
            )
        wrapper.distill_loss.load_state_dict(load_file(path, device=str(self.args.device)))

    def _load_best_model(self) -> None:
        # The Trainer loads the best checkpoint's weights into `self.model` non-strictly, which for the wrapper
        # (keys prefixed `student.`) would load nothing; load the student and the adapters as resume does.
        if isinstance(self.accelerator.unwrap_model(self.model), DistillationModule) and not self.is_deepspeed_enabled:
            best = self.state.best_model_checkpoint
            logger.info(f"Loading best model from {best} (score: {self.state.best_metric}).")
            self._load_from_checkpoint(best)
            return
        super()._load_best_model()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student; a timm student's final folder also loads with `timm.create_model("local-dir:...")`."""
        # Also for internal calls: `push_to_hub` saves through here before it uploads.
        self._check_writable(f"the model in {output_dir or self.args.output_dir}")
        # The run's result is the student's weight average when there is one; a checkpoint keeps the live weights.
        use_ema = self.ema is not None and not getattr(self, "_saving_checkpoint", False)
        with self.ema.swapped_in() if use_ema else contextlib.nullcontext():
            super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        # Only the final folder: resume loads checkpoints non-strictly, so their keys keep transformers' layout
        # (timm's unprefixed names would load nothing into the wrapper).
        timm_student = getattr(self.student.config, "model_type", None) == "timm_wrapper"
        if self.args.should_save and timm_student and not getattr(self, "_saving_checkpoint", False):
            make_timm_loadable(folder)
            share_like_other_files(folder)
