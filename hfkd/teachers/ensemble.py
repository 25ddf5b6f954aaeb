"""Several live teachers as one `Teacher` (`EnsembleTeacher`): each runs on its own pixels of the batch, their logits
combine by the rules of `hfkd.teachers.combine`, and one member (the first, or `teacher_features_from`) gives the
feature maps of feature losses."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from hfkd.losses import logits_of
from hfkd.models.label_space import check_same_label_space
from hfkd.teachers.base import Teacher, TeacherOutputs
from hfkd.teachers.combine import ENSEMBLE_MODES, ensemble_logits, normalized_weights
from hfkd.utils.errors import UsageError


def _with_logits(output: Any, logits: torch.Tensor) -> Any:
    """`output` (a model output) with its logits replaced; its other fields (feature maps) kept."""
    if isinstance(output, torch.Tensor):
        return logits
    combined = copy.copy(output)
    combined["logits"] = logits
    return combined


class EnsembleTeacher(Teacher):
    """Several live teachers as one `Teacher`: every member runs on its own pixels of the batch, and logit losses
    see their combined logits (`ensemble_logits`). Feature losses (and losses that read the teacher's classifier
    head) take the features of one member, `feature_member` (the first by default).

    Args:
        members: the live teachers (`hfkd.teacher.live_teacher`), member i built with `member=i`.
        weights: one weight per member (normalised); equal when `None`.
        mode (`str`): `"probs"` or `"logits"`, see the module docstring.
        temperature (`float`): the temperature of the `"probs"` average (the loss's).
        feature_member (`int`): the member whose outputs carry the features.
        names: how the members were named, for errors and the record.
    """

    def __init__(
        self,
        members: Sequence[Teacher],
        weights: Sequence[float] | None = None,
        *,
        mode: str = "probs",
        temperature: float = 1.0,
        feature_member: int = 0,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(members) < 2:
            raise UsageError("An ensemble needs two teachers or more; pass a single teacher as it is.")
        names = list(names or [f"teacher {i}" for i in range(len(members))])
        if mode not in ENSEMBLE_MODES:
            raise UsageError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
        if not 0 <= feature_member < len(members):
            raise UsageError(f"The feature teacher {feature_member} is not one of the {len(members)} teachers.")
        check_same_label_space(members, names)
        self.members, self.names = list(members), names
        self.weights = normalized_weights(weights, len(members))
        self.mode, self.temperature, self.feature_member = mode, float(temperature), feature_member
        self.model = self.members[feature_member].model

    @property
    def config(self) -> Any:
        return self.members[self.feature_member].config

    def _combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return ensemble_logits(logits, self.weights, mode=self.mode, temperature=self.temperature)

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        outputs = [member(batch, epoch) for member in self.members]
        features = outputs[self.feature_member]
        main = _with_logits(features.main, self._combine([logits_of(o.main) for o in outputs]))
        strong = None
        if features.strong is not None:
            strong = _with_logits(features.strong, self._combine([logits_of(o.strong) for o in outputs]))
        return TeacherOutputs(main, strong)

    def batch_keys(self) -> tuple[str, ...]:
        return tuple(key for member in self.members for key in member.batch_keys())

    def member_logits(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Each member's logits on the batch's view, for evaluating them one by one."""
        return [member.logits(batch) for member in self.members]

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._combine(self.member_logits(batch))

    def eval_logits(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The ensemble's logits (`""`) and each member's (`"member_<i>_"`), from one run of each member."""
        members = self.member_logits(batch)
        return {"": self._combine(members), **{f"member_{i}_": logits for i, logits in enumerate(members)}}

    def record(self) -> dict[str, Any]:
        members = [member.record() for member in self.members]
        return {
            "name_or_path": " + ".join(str(m.get("name_or_path")) for m in members),
            "local": any(m.get("local") for m in members),
            "revision": None,
            "commit": None,
            "num_labels": self.num_labels,
            "provenance": None,
            "ensemble": {
                "mode": self.mode,
                "weights": self.weights,
                "temperature": self.temperature if self.mode == "probs" else None,
                "feature_teacher": members[self.feature_member].get("name_or_path"),
            },
            "members": members,
        }
