"""Several teachers as one: how their logits combine for a logit loss.

Two rules, weighted by `weights` (normalised to sum to 1; equal by default):

- `"probs"` (the default): the teachers' softened distributions are averaged. At the loss's temperature `T` the
  ensemble's logits are `T * log(sum_i w_i * softmax(z_i / T))`, so that `softmax(logits / T)` is exactly the
  weighted mean of the teachers' `softmax(z_i / T)`: a KD or DKD loss at temperature `T` sees the averaged
  distribution. A loss that reads logits directly (logit standardisation) sees `T` times the log of that average.
- `"logits"`: the weighted mean of the logits, `sum_i w_i * z_i`, for every temperature at once.

Two copies of one teacher give that teacher's distribution under both rules (its logits exactly under `"logits"`,
up to a constant shift under `"probs"`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch

from .label_space import check_same_label_space
from .losses import logits_of
from .teacher import Teacher, TeacherOutputs

ENSEMBLE_MODES = ("probs", "logits")


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """`weights` scaled to sum to 1 (equal weights when `None`); a ValueError names a wrong count or value."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(
            f"--teacher_weights has {len(weights)} value(s) for {count} teacher(s): give one weight per --teacher."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--teacher_weights must be finite, >= 0 and not all 0; got {weights}.")
    total = sum(weights)
    return [w / total for w in weights]


def feature_member_index(wanted: str | int | None, names: Sequence[str]) -> int:
    """The position in `names` of the member `wanted` names (a name as given, or a 0-based position; None: 0)."""
    if wanted is None:
        return 0
    if str(wanted).isdigit() and int(wanted) < len(names):
        return int(wanted)
    if wanted in names:
        return list(names).index(wanted)
    raise ValueError(
        f"--teacher_features_from {wanted!r} is none of the teachers ({', '.join(map(repr, names))}): give one of "
        "those names or a position from 0."
    )


def check_ensemble_arguments(
    names: Sequence[str],
    weights: Sequence[float] | None,
    mode: str,
    temperature: float | None,
    features_from: str | int | None,
) -> None:
    """Refuse, when the arguments are parsed, an ensemble setting that cannot work (each error names the flag)."""
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"--teacher_ensemble_temperature must be > 0, got {temperature!r}.")
    if weights is not None:
        if len(names) == 1:
            raise ValueError("--teacher_weights weighs the teachers of an ensemble: pass two --teacher or more.")
        # Without names, the teachers are given to the trainer as models: the ensemble checks the count.
        normalized_weights(weights, len(names) or len(weights))
    if len(names) > 1 and features_from is not None:
        feature_member_index(features_from, names)


def ensemble_logits(
    logits: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    *,
    mode: str = "probs",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Combine the teachers' `(batch, classes)` logits into one tensor of logits (see the module docstring).

    Args:
        logits: one tensor per teacher, all of the same shape.
        weights: one weight per teacher (normalised here); equal when `None`.
        mode (`str`): `"probs"` or `"logits"`.
        temperature (`float`): the loss's temperature, for `"probs"`.

    Returns:
        `torch.Tensor`: float32 logits of the same shape.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
    if not logits:
        raise ValueError("An ensemble needs at least one teacher.")
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) != 1:
        raise ValueError(f"The teachers' logits come in shapes {sorted(shapes)}: they must share one label space.")
    if not temperature > 0:
        raise ValueError(f"The ensemble temperature must be > 0, got {temperature}.")
    w = normalized_weights(weights, len(logits))
    if len(logits) == 1:
        return logits[0].float()
    # The weights stay Python floats: no weight tensor is copied to the device at every step.
    if mode == "logits":
        return sum(weight * t.float() for weight, t in zip(w, logits))
    # log(sum_i w_i p_i) as a logsumexp over teachers, in log space: no probability underflows to 0.
    log_probs = [(t.float() / temperature).log_softmax(-1) + (math.log(weight) if weight > 0 else -math.inf)
                 for weight, t in zip(w, logits)]  # fmt: skip
    return temperature * torch.logsumexp(torch.stack(log_probs), dim=0)


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
            raise ValueError("An ensemble needs two teachers or more; pass a single teacher as it is.")
        names = list(names or [f"teacher {i}" for i in range(len(members))])
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
        if not 0 <= feature_member < len(members):
            raise ValueError(f"The feature teacher {feature_member} is not one of the {len(members)} teachers.")
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
