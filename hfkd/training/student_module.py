"""The student side of a distillation step: the loss built for the two models, and one module that runs the
student and the loss together."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hfkd.data.batch import LABELS, PIXEL_VALUES, STRONG_PIXEL_VALUES, require_view, teacher_pixels
from hfkd.losses import DistillationLoss, LossContext, create_loss, get_loss_class
from hfkd.models.distillation_head import enable_distillation_head, has_distillation_head, refusal, with_head_logits
from hfkd.models.embeddings import probe_image_context
from hfkd.models.features import (
    PreactivationRecorder,
    bn_before_relu_stats,
    classifier_head,
    probe_feature_shapes,
    require_preactivations,
    run_for_loss,
)
from hfkd.utils.upstream import ignore_in_ddp

ADAPTERS_NAME = "distill_adapters.safetensors"


def build_loss(
    key: str,
    kwargs: dict[str, Any],
    student: nn.Module,
    teacher_model: nn.Module | None,
    probe_batch: Callable[[], dict[str, torch.Tensor] | None],
    *,
    dataset_size: int | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> DistillationLoss:
    """`create_loss(key, **kwargs, context=...)` with the context its `needs` ask for, read off both models.

    Feature losses get the (C, H, W) shapes of every feature map, probed once on `probe_batch()` (a collated batch
    of a couple of training samples, or `None` without data, each model's on its own device) so that they can size
    their adapters (the label-free losses: each backbone's embedding size and last map); OFD the teacher's BN
    statistics; SDD the models' classifier heads. DeiT's student trains its
    distillation head apart (timm's distilled mode switched on; a student without one is refused). The loss is
    returned on the student's device.
    """
    needs = get_loss_class(key).needs
    if needs.distillation_head:
        enable_distillation_head(student, key)
    num_classes = getattr(getattr(student, "config", None), "num_labels", None)
    context = LossContext(num_classes=num_classes, dataset_size=dataset_size)
    if needs.preactivations:
        require_preactivations(student, "student")
        context.teacher_bn_stats = bn_before_relu_stats(teacher_model, "teacher")
    probe = probe_batch() if needs.hidden_states or needs.image_features else None
    if probe is not None and needs.hidden_states:
        with autocast():
            context.student_feature_shapes = probe_feature_shapes(student, probe[PIXEL_VALUES].to(device_of(student)))
            teacher_input = teacher_pixels(probe).to(device_of(teacher_model))
            context.teacher_feature_shapes = probe_feature_shapes(teacher_model, teacher_input)
    if needs.classifier_heads:
        context.student_head, context.teacher_head = classifier_head(student), classifier_head(teacher_model)
    if probe is not None and needs.image_features:  # each backbone's embedding size and feature map shape
        with autocast():
            probed = probe_image_context(
                student, teacher_model, probe[PIXEL_VALUES].to(device_of(student)),
                teacher_pixels(probe).to(device_of(teacher_model)),
            )  # fmt: skip
        context.student_embedding_dim = probed.student_embedding_dim
        context.teacher_embedding_dim = probed.teacher_embedding_dim
        context.student_feature_shapes = probed.student_feature_shapes
        context.teacher_feature_shapes = probed.teacher_feature_shapes
    return create_loss(key, context=context, **kwargs).to(device_of(student))


def check_student(key: str, student: nn.Module) -> None:
    """What loss `key` needs of the student itself, checked before the teacher loads: a distillation head (DeiT)."""
    if get_loss_class(key).needs.distillation_head and not has_distillation_head(student):
        raise refusal(key, f"({type(student).__name__})")


def device_of(model: nn.Module) -> torch.device:
    """Where `model`'s (first) parameter lies."""
    return next(model.parameters()).device


class DistillationModule(nn.Module):
    """The student and the distillation loss in one module (as timm's distillation task does): the trainer's model.

    DDP, the optimizer, mixed precision, gradient clipping and checkpoints therefore cover a loss's trainable
    parameters (adapters, embeddings, a learnable temperature) with no special case, and the student's forward on
    every view and the loss run inside one wrapped forward, as DDP requires.

    `forward(pixel_values=..., **inputs)` returns the student's output (evaluation). With
    `distill=(teacher_outputs, batch)` it runs the student for the loss, with what the loss's `needs` ask for
    (hidden states, pre-activation maps, the strong view in `strong_pixel_values`, both heads of a student with a
    distillation head), and returns `(student_output, loss_dict)`.
    """

    def __init__(self, student: nn.Module, distill_loss: DistillationLoss, align: Callable | None = None) -> None:
        super().__init__()
        self.student = student
        self.distill_loss = distill_loss
        # The task's view of both outputs for the loss (dense logits of other sizes resized); as they are by default.
        self.align = align or (lambda student_output, teacher_output, labels=None: (student_output, teacher_output))
        # Hooks on the student, installed once; they record only inside `run` (not state, not saved).
        self.preact_recorder = PreactivationRecorder(student, "student") if distill_loss.needs.preactivations else None
        # DDP would re-send these from rank 0 every step (51 MB for CRD on CIFAR); the loss keeps them in sync.
        ignore_in_ddp(self, [f"distill_loss.{name}" for name in distill_loss.rank_synchronized_buffers])

    @property
    def config(self) -> Any:
        return getattr(self.student, "config", None)

    @property
    def main_input_name(self) -> str:
        return getattr(self.student, "main_input_name", PIXEL_VALUES)

    def num_parameters(self, *args: Any, **kwargs: Any) -> int:
        """The student's parameter count (the Trainer's `total_flos` estimate reads it)."""
        count = getattr(self.student, "num_parameters", None)
        return count(*args, **kwargs) if count is not None else sum(p.numel() for p in self.student.parameters())

    def gradient_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        self.student.gradient_checkpointing_enable(*args, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.student.gradient_checkpointing_disable()

    def forward(self, distill: tuple[Any, Any] | None = None, **inputs: Any) -> Any:
        strong = inputs.pop(STRONG_PIXEL_VALUES, None)
        if distill is None:
            return self.student(**inputs)
        teacher_outputs, batch = distill
        needs = self.distill_loss.needs
        student_output = run_for_loss(self.student, self.preact_recorder, needs.hidden_states, **inputs)
        if needs.distillation_head:  # timm's training tuple as transformers' fields, `logits` their mean
            student_output = with_head_logits(student_output)
        if needs.strong_view:
            strong = require_view({STRONG_PIXEL_VALUES: strong}, STRONG_PIXEL_VALUES)
            batch.student_strong = run_for_loss(self.student, None, needs.hidden_states, pixel_values=strong)
        compared = self.align(student_output, teacher_outputs.main, inputs.get(LABELS))
        return student_output, self.distill_loss(*compared, batch)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The loss's parameters and buffers, contiguous and detached, for `distill_adapters.safetensors`."""
        return {k: v.detach().contiguous() for k, v in self.distill_loss.state_dict().items()}
