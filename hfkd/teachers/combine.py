"""How several teachers' logits combine for a logit loss, and the checks of those settings.

Two rules, weighted by `weights` (normalised to sum to 1; equal by default):

- `"probs"` (the default): the teachers' softened distributions are averaged. At the loss's temperature `T` the
  ensemble's logits are `T * log(sum_i w_i * softmax(z_i / T))`, so that `softmax(logits / T)` is exactly the
  weighted mean of the teachers' `softmax(z_i / T)`: a KD or DKD loss at temperature `T` sees the averaged
  distribution. A loss that reads logits directly (logit standardisation) sees `T` times the log of that average.
- `"logits"`: the weighted mean of the logits, `sum_i w_i * z_i`, for every temperature at once.

Two copies of one teacher give that teacher's distribution under both rules (its logits exactly under `"logits"`,
up to a constant shift under `"probs"`). This module holds rules and checks only (no teacher objects), so that
`DistillationArguments` can check an ensemble's settings when it is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hfkd.utils.errors import UsageError

ENSEMBLE_MODES = ("probs", "logits")


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """`weights` scaled to sum to 1 (equal weights when `None`); a ValueError names a wrong count or value."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise UsageError(
            f"--teacher_weights has {len(weights)} value(s) for {count} teacher(s): give one weight per --teacher."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(f"--teacher_weights must be finite, >= 0 and not all 0; got {weights}.")
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
    raise UsageError(
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
        raise UsageError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
    if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise UsageError(f"--teacher_ensemble_temperature must be > 0, got {temperature!r}.")
    if weights is not None:
        if len(names) == 1:
            raise UsageError("--teacher_weights weighs the teachers of an ensemble: pass two --teacher or more.")
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
        raise UsageError(f"--teacher_ensemble {mode!r}: use one of {', '.join(ENSEMBLE_MODES)}.")
    if not logits:
        raise UsageError("An ensemble needs at least one teacher.")
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) != 1:
        raise UsageError(f"The teachers' logits come in shapes {sorted(shapes)}: they must share one label space.")
    if not temperature > 0:
        raise UsageError(f"The ensemble temperature must be > 0, got {temperature}.")
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
