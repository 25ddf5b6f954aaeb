"""Students with a distillation head besides their class head: DeiT's distillation token (and LeViT's).

transformers' `DeiTForImageClassificationWithTeacher` (and `LevitForImageClassificationWithTeacher`) always return
both heads, `cls_logits` and `distillation_logits`, with their mean as `logits`. timm's distilled DeiTs
(`deit_*_distilled_patch16_224`, `VisionTransformerDistilled`) return the mean, and return the pair only in training
mode after `set_distilled_training(True)`. A loss that trains the two heads apart (`LossNeeds.distillation_head`)
needs the pair; evaluation, the saved model and `pipeline("image-classification")` keep the mean, as both libraries
predict at inference. This module says which students have such a head (from a loaded model or from its config,
before any weights load), switches a timm student to its distilled training mode, and gives a timm training output
the transformers fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import timm
import torch
from transformers.utils import ModelOutput

from hfkd.utils.errors import UsageError

WITH_TEACHER_SUFFIX = "ForImageClassificationWithTeacher"
"""transformers' classifiers with a distillation head end their class name so (DeiT, LeViT)."""

EXAMPLES = (
    "transformers' DeiTForImageClassificationWithTeacher (facebook/deit-*-distilled-patch16-224) or timm's "
    "deit_*_distilled_patch16_224"
)


@dataclass
class DistillationHeadsOutput(ModelOutput):
    """A timm distilled model's training output in transformers' fields: `logits` is the mean of both heads."""

    logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@functools.cache
def timm_has_distillation_head(architecture: str) -> bool:
    """Whether timm's `architecture` has a distillation head (`set_distilled_training`), built on the meta device
    (no memory, no weights)."""
    if not timm.is_model(architecture):
        return False
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    return callable(getattr(model, "set_distilled_training", None))


def has_distillation_head(model: Any) -> bool:
    """Whether a loaded student has a distillation head: a transformers `*ForImageClassificationWithTeacher`, or a
    timm model with `set_distilled_training` (bare or in `TimmWrapperForImageClassification`)."""
    timm_model = getattr(model, "timm_model", model)
    return callable(getattr(timm_model, "set_distilled_training", None)) or type(model).__name__.endswith(
        WITH_TEACHER_SUFFIX
    )


def config_has_distillation_head(config: dict[str, Any], timm_architecture: str | None = None) -> bool:
    """The same, read from a model's config (a transformers config's `architectures`, a timm config's
    `architecture`, or the timm architecture a name resolved to), before any weights load."""
    architecture = config.get("architecture") or timm_architecture
    if architecture is not None:
        return timm_has_distillation_head(architecture)
    return any(str(name).endswith(WITH_TEACHER_SUFFIX) for name in config.get("architectures") or [])


def refusal(loss_key: str, student: str) -> UsageError:
    """The one-line error for a student without a distillation head given a loss that needs one."""
    return UsageError(
        f"--loss {loss_key} trains a student's class head on the labels and its distillation head on the teacher, "
        f"and the student {student} has no distillation head: pass one ({EXAMPLES}, e.g. --student "
        "deit_tiny_distilled_patch16_224 --student_pretrained false), or another loss (kd, dist, ...)."
    )


def enable_distillation_head(model: Any, loss_key: str) -> None:
    """Make `model`'s training forward return both heads (timm: `set_distilled_training(True)`; transformers' always
    do); a student without a distillation head is refused, naming it."""
    if not has_distillation_head(model):
        raise refusal(loss_key, f"({type(model).__name__})")
    timm_model = getattr(model, "timm_model", model)
    if callable(getattr(timm_model, "set_distilled_training", None)):
        timm_model.set_distilled_training(True)


def with_head_logits(output: Any) -> Any:
    """`output` with `cls_logits` and `distillation_logits`: transformers' as it is; a timm model's training tuple
    (class head, distillation head), bare or as a TimmWrapper's `logits`, as `DistillationHeadsOutput`."""
    if isinstance(output, (tuple, list)) and len(output) == 2 and all(torch.is_tensor(x) for x in output):
        logits, hidden_states = tuple(output), None
    else:
        logits, hidden_states = getattr(output, "logits", None), getattr(output, "hidden_states", None)
    if isinstance(logits, (tuple, list)) and len(logits) == 2:
        cls_logits, distillation_logits = logits
        # timm's inference rule (VisionTransformerDistilled.forward_head): the mean of both heads.
        mean = (cls_logits + distillation_logits) / 2
        return DistillationHeadsOutput(mean, cls_logits, distillation_logits, hidden_states)
    return output
