"""The teacher a `DistillationTrainer` gets: one, an ensemble of several, or a cache of their outputs.

`build_teacher` turns what the trainer was given (a `Teacher`, a model, a checkpoint name, a list of them, or
nothing: the arguments' `teacher_model_name_or_path` or `teacher_cache_dir`) into a `hfkd.teachers.base.Teacher`;
`live_teacher` builds a live one (a `DeepSpeedTeacher` under ZeRO-3) prepared as the arguments ask.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from transformers.utils import logging

from hfkd.losses import LossNeeds, get_loss_class, resolve_loss_kwargs
from hfkd.models.label_space import model_name
from hfkd.teachers.base import Teacher
from hfkd.teachers.cached import CachedTeacher
from hfkd.teachers.deepspeed import DeepSpeedTeacher, deepspeed_zero_stage
from hfkd.teachers.ensemble import EnsembleTeacher
from hfkd.teachers.live import LiveTeacher, load_teacher, prepare_teacher, teacher_origin

logger = logging.get_logger(__name__)


def live_teacher(
    source: Any, args: Any, accelerator: Any, needs: LossNeeds, *, name: str | None = None, member: int = 0,
    backbone: bool = False,
) -> LiveTeacher:  # fmt: skip
    """A `LiveTeacher` (a `DeepSpeedTeacher` under ZeRO-3) from a model or a checkpoint name, prepared as the
    trainer's arguments ask (mixed-precision dtype, channels-last, compile). `name` is where a model came from, for
    the record; `member` its place in an ensemble (which of the batch's teacher pixels it reads); `backbone` loads a
    checkpoint name without its head (label-free distillation)."""
    name = source if isinstance(source, str) else name
    if isinstance(source, str):
        source = load_teacher(
            name, revision=args.teacher_model_revision, init_kwargs=args.teacher_model_init_kwargs, backbone=backbone
        )
    revision = args.teacher_model_revision
    origin = teacher_origin(source, name)  # before the teacher is cast: the record checks its weights
    common = {"autocast": accelerator.autocast, "name": name, "revision": revision, "origin": origin, "member": member}
    if deepspeed_zero_stage(accelerator) == 3:
        return DeepSpeedTeacher(source, needs, accelerator, **common)
    model = prepare_teacher(
        source,
        args.device,
        dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
        channels_last=args.distill_channels_last,
        compile_backend=args.teacher_compile_backend if args.teacher_compile else None,
    )
    return LiveTeacher(model, needs, **common)


def ensemble_temperature(args: Any) -> float:
    """The temperature of a `"probs"` ensemble: `teacher_ensemble_temperature`, else the loss's `temperature`
    (so that the loss sees the average of the teachers' softened distributions), else 1."""
    if args.teacher_ensemble_temperature is not None:
        return float(args.teacher_ensemble_temperature)
    kwargs = resolve_loss_kwargs(args.distill_loss, args.distill_loss_kwargs)
    value = kwargs.get("temperature")
    return float(value) if isinstance(value, (int, float)) and value > 0 else 1.0


def build_teacher(source: Any, args: Any, accelerator: Any, *, backbone: bool = False) -> Teacher | None:
    """The `Teacher` for a trainer: `source` (a `Teacher`, a model, a checkpoint name, a list of models or names for
    an ensemble, or `None` for `args.teacher_model_name_or_path`), or the cache of `args.teacher_cache_dir`;
    `None` for `distill_loss="ce"`. `backbone`: a checkpoint name loads as a backbone, without its head."""
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
        return live_teacher(single, args, accelerator, needs, name=fallback, backbone=backbone)
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
