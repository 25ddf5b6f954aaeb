"""A live teacher: a frozen model run on every batch, and how it is loaded and prepared.

`LiveTeacher` runs under `no_grad` and the student's autocast, cast once to the mixed-precision dtype, optionally
channels-last and compiled (`prepare_teacher`), and records what the loss's `needs` ask for (hidden states,
pre-activation maps, the strong view). `load_teacher` loads one from anything `hfkd.models.loading` resolves;
`teacher_origin` says where its weights came from (a released checkpoint, a folder trained by hfkd).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from hfkd.data.batch import (
    PIXEL_MASK,
    STRONG_PIXEL_VALUES,
    TEACHER_PIXEL_VALUES,
    TEACHER_STRONG_PIXEL_VALUES,
    member_key,
    teacher_pixels,
)
from hfkd.losses import LossNeeds, logits_of
from hfkd.models.features import PreactivationRecorder, is_convolutional, run_for_loss
from hfkd.models.loading import load_backbone, load_image_classifier, resolve_model_name
from hfkd.models.provenance import describe_provenance, teacher_provenance
from hfkd.teachers.base import Teacher, TeacherOutputs, teacher_record

logger = logging.get_logger(__name__)


def load_teacher(
    name_or_path: str, *, revision: str | None = "main", init_kwargs: dict[str, Any] | None = None,
    backbone: bool = False,
) -> PreTrainedModel:  # fmt: skip
    """Load a teacher from anything `hfkd.models.resolve_model_name` accepts (Hub id, timm id, folder, alias); with
    `backbone`, without its head (`hfkd.models.loading.load_backbone`).

    Remote code stays off unless `init_kwargs` sets `trust_remote_code=True`.
    """
    kwargs = dict(init_kwargs or {})
    trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
    spec = resolve_model_name(name_or_path, revision=revision)
    logger.info(f"Loading teacher {name_or_path!r} -> {spec.source} ({spec.kind}, revision {revision!r})")
    load = load_backbone if backbone else load_image_classifier
    return load(spec, trust_remote_code=trust_remote_code, **kwargs)


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put `model` in eval mode (no dropout, BatchNorm running statistics)."""
    model.requires_grad_(False)
    return model.eval()


def prepare_teacher(
    model: nn.Module,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_backend: str | None = None,
) -> nn.Module:
    """Freeze the teacher, place it on `device`, and make its forward as cheap as the run allows.

    `dtype` casts it once to the mixed-precision dtype (bf16/fp16 training: it is never trained, so it needs no
    float32 master weights); `channels_last` applies to convolutional teachers; `compile_backend` compiles its
    forward with `torch.compile`. The teacher is deliberately not handed to `accelerator.prepare_model`: that would
    register it with the accelerator (so `save_state` would write it) and wrap its forward for good. The trainer
    runs it under `accelerator.autocast()`, the student's mixed-precision context, and never wraps it in DDP.
    """
    model = freeze(model).to(device)
    if dtype is not None:
        model = model.to(dtype)
    if channels_last and is_convolutional(model):
        model = model.to(memory_format=torch.channels_last)
    if compile_backend:
        model.forward = torch.compile(model.forward, backend=compile_backend)
    return model


def teacher_id(model: nn.Module, fallback: str | None = None) -> str | None:
    """The Hub id or path the teacher was loaded from, when known."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or getattr(model, "name_or_path", None)
    return name or fallback


class LiveTeacher(Teacher):
    """A frozen model that runs on every batch (see `prepare_teacher` for how it is made cheap).

    Args:
        model: the prepared (frozen) teacher.
        needs: what the loss needs of the teacher's outputs.
        autocast: the student's mixed-precision context (`accelerator.autocast`).
        name, revision: where it came from, for the record.
        origin: how its weights were made, when known (`teacher_origin`: a released checkpoint, trained with hfkd).
        member: its place in a teacher ensemble (0 alone): it reads `teacher_pixel_values_<member>` when present.
    """

    def __init__(
        self,
        model: nn.Module,
        needs: LossNeeds,
        *,
        autocast: Callable[[], Any] = contextlib.nullcontext,
        name: str | None = None,
        revision: str | None = None,
        origin: str | None = None,
        member: int = 0,
    ) -> None:
        self.model, self.needs, self.autocast = model, needs, autocast
        self.name, self.revision = teacher_id(model, name), revision
        self.recorder = PreactivationRecorder(model, "teacher") if needs.preactivations else None
        self.origin, self.member = origin, member
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)

    def _run(self, pixel_values: torch.Tensor, for_loss: bool, **extra: Any) -> Any:
        # Eval mode again at every call: a user callback or `model.train()` on a container must not put the
        # teacher's BatchNorm/dropout into training mode.
        self.model.eval()
        if self.dtype is not None and pixel_values.is_floating_point() and pixel_values.dtype != self.dtype:
            pixel_values = pixel_values.to(self.dtype)  # a teacher kept in its own dtype (e.g. bf16 in fp32 training)
        with torch.no_grad(), self.autocast():
            if not for_loss:
                return self.model(pixel_values=pixel_values, **extra)
            inputs = {"pixel_values": pixel_values, **extra}
            return run_for_loss(self.model, self.recorder, self.needs.hidden_states, **inputs)

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        main = self._run(teacher_pixels(batch, member=self.member), for_loss=True, **_padding(batch))
        strong = None
        if self.needs.strong_view:
            strong = self._run(teacher_pixels(batch, STRONG_PIXEL_VALUES, self.member), for_loss=True)
        return TeacherOutputs(main, strong)

    def outputs(self, batch: dict[str, Any]) -> Any:
        """The teacher's whole output on the batch's teacher view (evaluation: a detector's boxes and logits)."""
        return self._run(teacher_pixels(batch, member=self.member), for_loss=False, **_padding(batch))

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return logits_of(self.outputs(batch))

    def batch_keys(self) -> tuple[str, ...]:
        return tuple(member_key(key, self.member) for key in (TEACHER_PIXEL_VALUES, TEACHER_STRONG_PIXEL_VALUES))

    def record(self) -> dict[str, Any]:
        return {
            **teacher_record(self.name, self.revision),
            "num_labels": getattr(self.config, "num_labels", None),
            "provenance": self.origin,
        }


def teacher_origin(model: nn.Module, name: str | None) -> str | None:
    """How a teacher's weights were made, for the card and the report: a released reference checkpoint converted by
    `hfkd.convert` (still unchanged), a folder trained by hfkd (its recipe or loss), else `None` (not known)."""
    released = describe_provenance(teacher_provenance(model))
    if released is not None:
        return released
    record = os.path.join(name, "distill_config.json") if name and os.path.isdir(name) else None
    if record is None or not os.path.isfile(record):
        return None
    with open(record, encoding="utf-8") as f:
        config = json.load(f)
    how = f"recipe {config['recipe']}" if config.get("recipe") else f"--loss {config.get('distill_loss')}"
    return f"trained with hfkd ({how}), not a released checkpoint"


def _padding(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's `pixel_mask` (detection batches of images padded to one size), which the teacher takes as the
    student does; nothing for batches without one."""
    return {PIXEL_MASK: batch[PIXEL_MASK]} if batch.get(PIXEL_MASK) is not None else {}
