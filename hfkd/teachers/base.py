"""The teacher behind one small interface: what the trainer needs of a teacher, whatever its kind.

`Teacher` is what the trainer talks to: `teacher(batch, epoch)` returns its outputs on the batch's views
(`TeacherOutputs`), `teacher.logits(batch)` its plain logits for evaluation, `teacher.record()` what
`distill_config.json` and the card say of it. The trainer never asks which kind it has: `LiveTeacher`
(`hfkd.teachers.live`), `DeepSpeedTeacher` (`hfkd.teachers.deepspeed`), `CachedTeacher` (`hfkd.teachers.cached`) or an
`EnsembleTeacher` of several live ones (`hfkd.teachers.ensemble`); `hfkd.teachers.build.build_teacher` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hfkd.hub.commits import hub_commit
from hfkd.losses import LossNeeds
from hfkd.utils.local_names import is_local_path, neutral_name


def teacher_record(name: str | None, revision: str | None) -> dict[str, Any]:
    """What a run and a teacher cache record of a teacher checkpoint: `name_or_path` (a local folder by its name
    only, never its absolute path), `local`, `revision` (`None` for a local folder) and `commit` (the Hub commit its
    config came from, read from the local Hub cache, when known)."""
    local = bool(name) and is_local_path(name)
    return {
        "name_or_path": neutral_name(name),
        "local": local,
        "revision": None if local else revision,
        "commit": None if local else hub_commit(name, revision),
    }


@dataclass
class TeacherOutputs:
    """The teacher's outputs for one batch: on the batch's view, and on its strong view when the loss needs one."""

    main: Any
    strong: Any = None


class Teacher:
    """What the trainer needs of a teacher. Subclasses set `model` (the live module, or `None`) and implement
    `__call__` and `logits`; `record()` describes the teacher for `distill_config.json` and the model card."""

    model: nn.Module | None = None

    @classmethod
    def unsupported(cls, needs: LossNeeds) -> list[str]:
        """What of `needs` this kind of teacher cannot provide (empty: everything)."""
        return []

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        raise NotImplementedError

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits on the batch's view: evaluation."""
        raise NotImplementedError

    def eval_logits(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What evaluation scores, by metric-name infix: the teacher's logits (`""`); an ensemble adds its members'."""
        return {"": self.logits(batch)}

    def batch_keys(self) -> tuple[str, ...]:
        """The batch entries this teacher reads besides the student's views (its own pixels, cached outputs), which
        a batch must keep (`remove_unused_columns`)."""
        return ()

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a training set this teacher cannot serve (a cache of another size); nothing to check by default."""

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def num_labels(self) -> int | None:
        return getattr(self.config, "num_labels", None)

    @property
    def id2label(self) -> Mapping[int, str] | None:
        return getattr(self.config, "id2label", None)

    def record(self) -> dict[str, Any]:
        raise NotImplementedError
