"""Label spaces: a teacher's classes against the student's and the dataset's, and mapping a teacher onto a subset.

`check_label_space` refuses a teacher that predicts another number of classes before any step runs (the script calls it
on the models' configs, the trainer on its `Teacher`); `check_same_label_space` refuses an ensemble whose teachers
disagree on their classes; `map_teacher_labels` restricts and reorders a teacher trained on
a superset of the dataset's classes (`--teacher_label_map`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


class LabelMappedTeacher(nn.Module):
    """A teacher whose logits are restricted and reordered to the dataset's classes (`logits[:, indices]`)."""

    def __init__(self, teacher: nn.Module, indices: Sequence[int], names: Sequence[str]) -> None:
        super().__init__()
        self.teacher = teacher
        self.register_buffer("indices", torch.tensor(list(indices), dtype=torch.long), persistent=False)
        self.config = copy.deepcopy(teacher.config)
        self.config.num_labels = len(indices)
        self.config.id2label = dict(enumerate(names))
        self.config.label2id = {name: i for i, name in enumerate(names)}

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        outputs = self.teacher(pixel_values=pixel_values, **kwargs)
        outputs["logits"] = outputs["logits"].index_select(-1, self.indices)
        return outputs


def map_teacher_labels(
    teacher: PreTrainedModel, label_map: Mapping[str, str | int], dataset_names: Sequence[str]
) -> LabelMappedTeacher:
    """Map each dataset class onto a teacher class, by the teacher's class name or index.

    Raises `ValueError` naming the dataset classes without a mapping, or teacher classes that do not exist.
    """
    teacher_ids = {str(name).lower(): int(i) for i, name in (teacher.config.id2label or {}).items()}
    num_teacher = teacher.config.num_labels
    missing = [name for name in dataset_names if name not in label_map]
    if missing:
        raise UsageError(
            f"--teacher_label_map has no entry for dataset class(es) {missing[:10]}; map every dataset class "
            "to a teacher class name or index."
        )
    indices = []
    for name in dataset_names:
        target = label_map[name]
        index = target if isinstance(target, int) else teacher_ids.get(str(target).lower())
        if index is None or not 0 <= index < num_teacher:
            raise UsageError(
                f"--teacher_label_map maps {name!r} to {target!r}, which is not a class of the teacher "
                f"({num_teacher} classes, e.g. {list(teacher.config.id2label.values())[:5]})."
            )
        indices.append(index)
    return LabelMappedTeacher(teacher, indices, list(dataset_names))


def _normalise_label(label: str) -> str:
    return str(label).strip().lower().replace("_", " ")


def check_label_space(
    teacher_name: str,
    teacher_labels: int | None,
    num_labels: int | None,
    teacher_id2label: Mapping[int, str] | None = None,
    id2label: Mapping[int, str] | None = None,
) -> None:
    """Refuse a teacher that predicts another number of classes than the student/dataset, before any step runs.

    Differing class names only log a warning: checkpoints often carry placeholder names. Unknown counts pass.
    """
    if teacher_labels is None or num_labels is None:
        return
    if teacher_labels != num_labels:
        raise UsageError(
            f"Teacher {teacher_name!r} predicts {teacher_labels} classes but the student (and its dataset) "
            f"{num_labels}; distilling its logits needs the same label space. Fine-tune the teacher on this dataset "
            f"first with `--loss ce` (e.g. `hfkd distill --student {teacher_name} --loss ce "
            "--output_dir teacher-ft ...`, then `--teacher teacher-ft`), or map the dataset's classes onto the "
            "teacher's with `--teacher_label_map` (a JSON object of dataset class name to teacher class name or "
            "index)."
        )
    if not id2label or not teacher_id2label:
        return
    teacher_names = {int(i): label for i, label in teacher_id2label.items()}
    mismatched = [
        (i, teacher_names.get(i), label)
        for i, label in sorted((int(i), label) for i, label in id2label.items())
        if _normalise_label(teacher_names.get(i, "")) != _normalise_label(label)
    ]
    if mismatched:
        shown = ", ".join(f"{i}: {t!r} vs {d!r}" for i, t, d in mismatched[:5])
        logger.warning(
            f"Teacher {teacher_name!r} has {num_labels} classes like the dataset, but {len(mismatched)} class names "
            f"differ (teacher vs dataset: {shown}). Fine if the teacher was trained on this dataset with other "
            "names; otherwise its logits are in another class order."
        )


def model_name(model: Any) -> str:
    """How messages name a model object: where it was loaded from, else its class."""
    return getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__


def check_teacher_labels(teacher: Any, num_labels: int | None, id2label: Mapping[int, str] | None = None) -> None:
    """`check_label_space` for a teacher model (its config) or an `hfkd.teacher.Teacher` (which knows its labels)."""
    if isinstance(teacher, nn.Module):
        config = getattr(teacher, "config", None)
        name = model_name(teacher)
        labels, names = getattr(config, "num_labels", None), getattr(config, "id2label", None)
    else:
        name, labels, names = teacher.record().get("name_or_path"), teacher.num_labels, teacher.id2label
        name = name or type(getattr(teacher, "model", None) or teacher).__name__
    check_label_space(name, labels, num_labels, names, id2label)


def _informative(id2label: Mapping[int, str] | None) -> dict[int, str] | None:
    """A model's class names, or None when they are transformers' placeholders (LABEL_0, ...)."""
    if not id2label:
        return None
    names = {int(k): str(v) for k, v in id2label.items()}
    return None if all(v == f"LABEL_{k}" for k, v in names.items()) else names


def check_same_label_space(members: Sequence[Any], names: Sequence[str]) -> None:
    """Refuse teachers (anything with `num_labels` and `id2label`: an `hfkd.teacher.Teacher`, a config) that do not
    predict the same classes in the same order, the ones of an ensemble (`names`: how the user named them). Stricter
    than `check_label_space`: two teachers' informative class names must agree."""
    first = members[0]
    for name, member in zip(names[1:], members[1:]):
        if member.num_labels != first.num_labels:
            raise UsageError(
                f"Teacher {name!r} predicts {member.num_labels} classes and teacher {names[0]!r} "
                f"{first.num_labels}: an ensemble's teachers must share one label space."
            )
        mine, theirs = _informative(member.id2label), _informative(first.id2label)
        if mine is not None and theirs is not None and mine != theirs:
            differ = next(k for k in sorted(theirs) if mine.get(k) != theirs[k])
            raise UsageError(
                f"Teachers {names[0]!r} and {name!r} name class {differ} differently ({theirs[differ]!r} vs "
                f"{mine.get(differ)!r}): an ensemble's teachers must predict the same classes in the same order."
            )
