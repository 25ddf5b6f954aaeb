"""A script run's output folder: what it holds decides whether the run starts, resumes or refuses, before any work.

- A folder with a finished run (`all_results.json`, `model.safetensors`, `distill_config.json`) is refused unless
  `--overwrite_output_dir` (which first removes every output of the old run) or `--resume_from_checkpoint`.
- A folder with an unfinished run (checkpoints, no final files) is resumed from its newest complete checkpoint, as
  transformers' own examples do, but only when the settings it recorded (`RUN_SETTINGS_NAME`: loss, models, data
  and selection, optimiser, schedule, batch, seed, precision) equal this run's; otherwise the run is refused, naming
  the fields that differ.
- A fresh folder records this run's settings before training starts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict, is_dataclass
from typing import Any

from transformers.utils import logging

from hfkd.training.checkpoints import checkpoints, latest_complete_checkpoint
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path, neutral_name

logger = logging.get_logger(__name__)


# A leading underscore keeps it out of Hub pushes (`Trainer.push_to_hub` ignores "_*"): it describes the run.
RUN_SETTINGS_NAME = "_hfkd_run_settings.json"


FINISHED_RUN_FILES = ("all_results.json", "model.safetensors", "distill_config.json")


# What a run writes into its output folder, removed by --overwrite_output_dir (nothing else is touched).
RUN_OUTPUTS = (
    RUN_SETTINGS_NAME, "all_results.json", "train_results.json", "eval_results.json", "teacher_eval_results.json",
    "trainer_state.json", "training_args.bin", "distill_config.json", "distill_adapters.safetensors", "config.json",
    "model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "preprocessor_config.json",
    "README.md", "checkpoint-*", "runs",
)  # fmt: skip


SETTINGS_FIELDS = {
    "models": (
        "student_model_name_or_path", "student_revision", "student_pretrained", "drop_path_rate",
        "teacher_model_name_or_path", "teacher_model_revision", "teacher_pretrained", "teacher_label_map",
        "teacher_cache_dir",
    ),
    "loss": ("distill_loss", "distill_loss_kwargs", "distill_ce_weight", "distill_weight"),
    "data": (
        "dataset", "dataset_config", "train_split", "eval_split", "image_column", "label_column", "max_train_samples",
        "max_eval_samples", "labelled_samples", "train_augment", "interpolation", "image_mean", "image_std",
        "teacher_input", "rand_augment", "random_erasing", "distill_mixup", "distill_cutmix", "skip_unreadable",
        "streaming", "shuffle_buffer_size",
    ),
    "optimiser": (
        "optim", "optim_args", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
        "max_grad_norm", "label_smoothing_factor", "distill_decay_all_parameters", "distill_no_decay_1d",
        "distill_timm_optimizer", "distill_timm_optimizer_kwargs", "distill_ema", "distill_ema_decay",
        "distill_ema_warmup",
    ),
    "schedule": (
        "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "num_train_epochs", "max_steps",
        "distill_lr_milestones", "distill_lr_gamma", "distill_lr_milestones_unit", "distill_lr_decay_epochs",
        "distill_lr_warmup_epochs", "distill_lr_warmup_lr",
    ),
    "batch": ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size"),
    "seed": ("seed", "data_seed"),
    "precision": ("bf16", "fp16"),
}  # fmt: skip


def _plain(value: Any) -> Any:
    """A JSON-comparable form of an argument value (enums by value, dataclasses as dicts). A local path becomes its
    folder name and a hash of its absolute form: comparable, and no path of the machine is written."""
    if is_dataclass(value):
        value = asdict(value)
    value = getattr(value, "value", value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]  # e.g. the teachers of an ensemble
    if isinstance(value, str) and is_local_path(value):
        absolute = os.path.abspath(os.path.expanduser(value))
        return f"{neutral_name(value)} (local, {hashlib.sha256(absolute.encode()).hexdigest()[:12]})"
    return json.loads(json.dumps(value, default=str))


def run_settings(*arg_groups: Any) -> dict[str, Any]:
    """The settings that make two runs the same run, read from the parsed argument dataclasses."""
    values: dict[str, Any] = {}
    for group in arg_groups:
        for name in (name for names in SETTINGS_FIELDS.values() for name in names):
            if hasattr(group, name):
                values[name] = _plain(getattr(group, name))
    return values


# Settings added after a version that already wrote run folders, with the value those runs had: a folder written
# before a setting existed ran with its default, and is the same run as one that keeps it.
ADDED_SETTINGS = {
    "rand_augment": None, "random_erasing": 0.0, "distill_lr_decay_epochs": None, "distill_lr_warmup_epochs": 0.0,
    "distill_lr_warmup_lr": 0.0, "drop_path_rate": None, "interpolation": None, "image_mean": None, "image_std": None,
    "teacher_input": "own", "distill_mixup": 0.0, "distill_cutmix": 0.0,
}  # fmt: skip


def differing_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`name: saved -> current` for every setting that differs (a setting the saved run predates counts as its
    default, `ADDED_SETTINGS`)."""
    saved = {**{n: v for n, v in ADDED_SETTINGS.items() if n in current}, **saved}
    names = sorted(set(saved) | set(current))
    return [f"{n}: {saved.get(n)!r} -> {current.get(n)!r}" for n in names if saved.get(n) != current.get(n)]


def _finished_files(folder: str) -> list[str]:
    return [name for name in FINISHED_RUN_FILES if os.path.exists(os.path.join(folder, name))]


def clean_output_dir(folder: str) -> list[str]:
    """Remove every output of an earlier run from `folder` (`RUN_OUTPUTS`; nothing else) and return what went."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(os.path.basename(path))
    if removed:
        logger.warning(f"--overwrite_output_dir: removed the earlier run's {', '.join(removed)} from {folder}.")
    return removed


def prepare_output_dir(folder: str, settings: dict[str, Any], *, overwrite: bool, resume: Any) -> str | None:
    """Decide, before any weights or data load, what this run does with `folder`; returns the checkpoint to resume
    from (`resume` as given, or the newest complete checkpoint of an unfinished run with the same settings), or None.

    Raises `ValueError` naming the way out when the folder holds a finished run, or an unfinished run with other
    settings. Nothing is removed here; `start_run` removes an overwritten run's outputs once every check passed.
    """
    explicit = resume not in (None, False) and str(resume).lower() not in ("false", "none", "")
    if overwrite and explicit:
        raise UsageError("--overwrite_output_dir starts over, --resume_from_checkpoint continues: pass one of them.")
    if overwrite or not os.path.isdir(folder):
        return None
    found, saved = _finished_files(folder), _read_settings(folder)
    if found and not explicit:
        raise UsageError(
            f"Output folder {folder!r} already holds a finished run ({', '.join(found)}). Pass another "
            "`--output_dir`, `--overwrite_output_dir` to write over it, or `--resume_from_checkpoint` to continue."
        )
    differ = differing_settings(saved, settings) if saved is not None else []
    if explicit:
        if differ:
            logger.warning(f"Resuming with settings that differ from the recorded run's: {'; '.join(differ)}.")
        return resume
    if not checkpoints(folder):
        return None  # nothing to resume, and nothing of the earlier attempt worth keeping
    if saved is None:
        raise UsageError(
            f"Output folder {folder!r} holds checkpoints but no {RUN_SETTINGS_NAME}, so whether they belong to this "
            "run is unknown. Pass another --output_dir, --overwrite_output_dir to start over there, or "
            "--resume_from_checkpoint <checkpoint> to continue from one of them."
        )
    if differ:
        raise UsageError(
            f"Output folder {folder!r} holds an unfinished run with other settings ({'; '.join(differ)}). Pass "
            "another --output_dir for this run, or --overwrite_output_dir to discard that run and start over."
        )
    latest = latest_complete_checkpoint(folder)
    if latest is None:
        logger.warning(f"{folder!r}: an unfinished run with the same settings, no complete checkpoint; starting over.")
    else:
        logger.warning(f"{folder!r} holds an unfinished run with the same settings: resuming from {latest}.")
    return latest


def start_run(folder: str, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Once every check passed: remove an overwritten run's outputs, and record this run's settings."""
    if overwrite and os.path.isdir(folder):
        clean_output_dir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RUN_SETTINGS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _read_settings(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, RUN_SETTINGS_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
