"""The teacher a `DistillationTrainer` gets: one, an ensemble of several, or a cache of their outputs.

`build_teacher` turns what the trainer was given (a `Teacher`, a model, a checkpoint name, a list of them, or
nothing: the arguments' `teacher_model_name_or_path` or `teacher_cache_dir`) into an `hfkd.teacher.Teacher`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from transformers.utils import logging

from .ensemble import EnsembleTeacher
from .label_space import model_name
from .losses import LossNeeds, get_loss_class, resolve_loss_kwargs
from .teacher import CachedTeacher, Teacher, live_teacher

logger = logging.get_logger(__name__)


def ensemble_temperature(args: Any) -> float:
    """The temperature of a `"probs"` ensemble: `teacher_ensemble_temperature`, else the loss's `temperature`
    (so that the loss sees the average of the teachers' softened distributions), else 1."""
    if args.teacher_ensemble_temperature is not None:
        return float(args.teacher_ensemble_temperature)
    kwargs = resolve_loss_kwargs(args.distill_loss, args.distill_loss_kwargs)
    value = kwargs.get("temperature")
    return float(value) if isinstance(value, (int, float)) and value > 0 else 1.0


def build_teacher(source: Any, args: Any, accelerator: Any) -> Teacher | None:
    """The `Teacher` for a trainer: `source` (a `Teacher`, a model, a checkpoint name, a list of models or names for
    an ensemble, or `None` for `args.teacher_model_name_or_path`), or the cache of `args.teacher_cache_dir`;
    `None` for `distill_loss="ce"`."""
    if not args.uses_teacher:
        if source is not None:
            logger.warning("distill_loss='ce' trains on the labels alone; the teacher is ignored.")
        return None
    if isinstance(source, Teacher):
        return source
    if source is None and args.teacher_cache_dir is not None:
        return CachedTeacher(args.teacher_cache_dir, args.device)
    if source is None:
        source = args.teacher_model_name_or_path
    needs = get_loss_class(args.distill_loss).needs
    if not isinstance(source, (list, tuple)) or len(source) == 1:
        single = source[0] if isinstance(source, (list, tuple)) else source
        fallback = args.teacher_model_name_or_path if isinstance(args.teacher_model_name_or_path, str) else None
        return live_teacher(single, args, accelerator, needs, name=fallback)
    names = [member if isinstance(member, str) else model_name(member) for member in source]
    feature_member = args.feature_teacher_index(names)
    # Only the feature teacher records feature maps; the others give logits (and the strong view's, if needed).
    logits_only = replace(LossNeeds(), strong_view=needs.strong_view)
    members = [
        live_teacher(member, args, accelerator, needs if i == feature_member else logits_only, member=i)
        for i, member in enumerate(source)
    ]
    ensemble = EnsembleTeacher(
        members,
        args.teacher_weights,
        mode=args.teacher_ensemble,
        temperature=ensemble_temperature(args),
        feature_member=feature_member,
        names=names,
    )
    uses_features = needs.hidden_states or needs.preactivations or needs.classifier_heads
    if uses_features:
        logger.info(
            f"{args.distill_loss}: the feature maps come from teacher {names[feature_member]!r} "
            f"(--teacher_features_from); the ensemble's combined logits go to the logit terms."
        )
    logger.info(
        f"Teacher ensemble of {len(members)}: {args.teacher_ensemble} average, weights "
        f"{', '.join(f'{w:.3g}' for w in ensemble.weights)}"
        + (f", temperature {ensemble.temperature:g}." if args.teacher_ensemble == "probs" else ".")
    )
    return ensemble
