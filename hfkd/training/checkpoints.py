"""Checkpoints and saving: what lands on disk is complete, finite and free of secrets.

- A checkpoint is complete once `CHECKPOINT_MARKER` is written into it, after everything else, by the main process;
  `latest_complete_checkpoint` skips (and names) the others, and old ones are rotated out only once a new one is
  complete, so a kill leaves a complete checkpoint or a recognisably incomplete one. `resume_from_checkpoint` may be
  `True` or `"latest"`, which take the newest complete one (`resolve_checkpoint`).
- Before any checkpoint, final model or card is written, no step since the last check was non-finite and every
  weight is finite (`hfkd.training.callbacks`).
- The student is saved bare (loadable with `AutoModelForImageClassification`), a loss's trainable parameters beside
  it in `distill_adapters.safetensors`, restored on resume and when the best model is loaded; with `distill_ema`,
  the final model is the student's weight average, and each checkpoint holds it too.
- `training_args.bin` never holds the Hub token.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import logging

from hfkd.models.export import make_timm_loadable
from hfkd.training.callbacks import check_finite_weights
from hfkd.training.student_module import ADAPTERS_NAME, DistillationModule
from hfkd.utils import upstream
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import neutral_name

logger = logging.get_logger(__name__)


DISTILL_CONFIG_NAME = "distill_config.json"


TRAINING_ARGS_NAME = "training_args.bin"


def _entries(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `state_dict` under `prefix`, without it, contiguous and detached (for safetensors)."""
    return {k[len(prefix) :]: v.detach().contiguous() for k, v in state_dict.items() if k.startswith(prefix)}


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
    """How `DistillationTrainer` saves and resumes (see the module docstring): `train`, `save_model`, and the hooks
    that `hfkd.utils.upstream.TrainerInternals` calls from the Trainer's private saving and loading methods."""

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

    @contextlib.contextmanager
    def writing_checkpoint(self) -> Iterator[None]:
        """While the Trainer writes a checkpoint: nothing is written unless every weight is finite, and the
        checkpoint holds the live weights (to resume from), the EMA beside them."""
        self._check_writable(f"checkpoint-{self.state.global_step}")
        self._saving_checkpoint = True
        try:
            yield
        finally:
            self._saving_checkpoint = False

    def finish_checkpoint(self, run_dir: str, limit: int | None) -> None:
        """Once the Trainer wrote `run_dir/checkpoint-<step>`: the EMA beside it, its completeness marker once every
        process is done, and only then the rotation of old checkpoints (keeping `limit` complete ones)."""
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.ema is not None and self.args.should_save:
            self.ema.save(folder)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_checkpoint_complete(folder)
            rotate_complete_checkpoints(run_dir, limit, keep=self.state.best_model_checkpoint)

    def write_model(self, output_dir: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model into `output_dir`, where `save_model` saves it (given the gathered `state_dict` of a model
        that DeepSpeed ZeRO-3 or FSDP shards): the bare student, loadable with `AutoModelForImageClassification`, and
        a loss's trainable parameters beside it in `distill_adapters.safetensors`, both taken from `state_dict` when
        there is one (a sharded module holds only its own part); then `training_args.bin` and
        `distill_config.json`."""
        wrapper = self.accelerator.unwrap_model(self.model)
        if not isinstance(wrapper, DistillationModule):
            upstream.trainer_save(self, output_dir, state_dict)
        elif self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            student_state = None if state_dict is None else _entries(state_dict, "student.")
            wrapper.student.save_pretrained(output_dir, state_dict=student_state)
            adapters = wrapper.adapter_state_dict() if state_dict is None else _entries(state_dict, "distill_loss.")
            # A label-free student is saved as a backbone alone; its projections stay in checkpoints unless asked for.
            final_backbone = self.task.label_free and not getattr(self, "_saving_checkpoint", False)
            if adapters and not (final_backbone and not self.args.distill_save_projections):
                save_file(adapters, os.path.join(output_dir, ADAPTERS_NAME), metadata={"format": "pt"})
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
        if self.args.should_save:
            save_training_args(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            share_like_other_files(output_dir)
            with open(os.path.join(output_dir, DISTILL_CONFIG_NAME), "w", encoding="utf-8") as f:
                json.dump(self.distill_config(), f, indent=2, sort_keys=True)

    def load_checkpoint(self, folder: str, model: nn.Module | None = None) -> None:
        """Load a checkpoint's weights (resuming, or the best one at the end): the student, the loss's parameters
        and the EMA."""
        if self.ema is not None:
            self.ema.load(folder)
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(wrapper, DistillationModule):
            upstream.trainer_load_checkpoint(self, folder, model)
            return
        upstream.trainer_load_checkpoint(self, folder, wrapper.student)
        if not wrapper.adapter_state_dict():
            return
        path = os.path.join(folder, ADAPTERS_NAME)
        if not os.path.isfile(path):
            raise UsageError(
                f"Checkpoint {folder!r} has no {ADAPTERS_NAME}, which loss "
                f"{self.args.distill_loss!r} needs to resume. Resume from a checkpoint of a run with this loss."
            )
        wrapper.distill_loss.load_state_dict(load_file(path, device=str(self.args.device)))

    def load_best_model(self) -> None:
        """Load the best checkpoint at the end of training (`load_best_model_at_end`) as resuming does: the
        Trainer's own loading puts a checkpoint's bare-student keys into the student module non-strictly, which
        loads nothing."""
        if isinstance(self.accelerator.unwrap_model(self.model), DistillationModule) and not self.is_deepspeed_enabled:
            best = self.state.best_model_checkpoint
            logger.info(f"Loading best model from {best} (score: {self.state.best_metric}).")
            self.load_checkpoint(best)
            return
        upstream.trainer_load_best_model(self)

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


CHECKPOINT_MARKER = "hfkd_checkpoint_complete.json"


_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def mark_checkpoint_complete(folder: str) -> None:
    """Write the marker that makes `folder` a complete checkpoint: the files it holds and their sizes."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != CHECKPOINT_MARKER:
                path = os.path.join(root, name)
                files[os.path.relpath(path, folder)] = os.path.getsize(path)
    tmp = os.path.join(folder, CHECKPOINT_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(folder, CHECKPOINT_MARKER))


def checkpoint_is_complete(folder: str) -> bool:
    """Whether `folder` has its marker and every file the marker lists, with the recorded size."""
    marker = os.path.join(folder, CHECKPOINT_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        os.path.isfile(os.path.join(folder, name)) and os.path.getsize(os.path.join(folder, name)) == size
        for name, size in files.items()
    )


def checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """The `checkpoint-N` folders of `output_dir`, as (N, path) sorted by N."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_DIR.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint of `output_dir`; newer incomplete ones are named in a warning and skipped."""
    for _, path in reversed(checkpoints(output_dir)):
        if checkpoint_is_complete(path):
            return path
        logger.warning(
            f"Skipping {path}: an incomplete checkpoint (no {CHECKPOINT_MARKER}; the run was likely stopped while "
            "writing it). Resuming from an older complete one."
        )
    return None


def rotate_complete_checkpoints(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `keep`, the best one); delete the older ones, and incomplete
    ones older than the newest complete checkpoint (left by a killed run, never resumable)."""
    if not limit or limit <= 0:
        return
    found = checkpoints(output_dir)
    complete = [path for _, path in found if checkpoint_is_complete(path)]
    if not complete:
        return
    newest = max(step for step, path in found if path in complete)
    protected = set(complete[-limit:]) | ({os.path.normpath(keep)} if keep else set())
    for step, path in found:
        stale_incomplete = path not in complete and step < newest
        if os.path.normpath(path) not in protected and (path in complete or stale_incomplete):
            logger.info(f"Deleting older checkpoint {path} (save_total_limit={limit}).")
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(output_dir: str, resume: str | bool | None) -> str | None:
    """What `resume_from_checkpoint` means: `None`/`False` nothing; `True`, `"true"` or `"latest"` the newest complete
    checkpoint of `output_dir`; a path that folder, refused when it is an incomplete checkpoint."""
    if resume is None or resume is False or str(resume).lower() in ("false", "none", ""):
        return None
    if resume is True or str(resume).lower() in ("true", "latest", "last"):
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            raise UsageError(
                f"resume_from_checkpoint={resume!r}: {output_dir!r} holds no complete checkpoint. Start without "
                "--resume_from_checkpoint, or pass the path of a checkpoint folder."
            )
        logger.warning(f"Resuming from {found}.")
        return found
    resume = str(resume)
    if not os.path.isdir(resume):
        raise UsageError(f"resume_from_checkpoint={resume!r} is not a folder. Pass a checkpoint-N folder or 'latest'.")
    if not checkpoint_is_complete(resume):
        missing = [n for n in ("trainer_state.json", "config.json") if not os.path.isfile(os.path.join(resume, n))]
        if missing:
            raise UsageError(
                f"{resume!r} is an incomplete checkpoint (no {', '.join(missing)}): the run was stopped while writing "
                "it. Pass an older checkpoint, or --resume_from_checkpoint latest."
            )
        logger.warning(f"{resume!r} has no completeness marker (not written by hfkd); resuming from it as it is.")
    return resume
