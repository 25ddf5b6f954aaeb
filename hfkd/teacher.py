"""Loading and preparing the frozen teacher."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def load_teacher(
    name_or_path: str, *, revision: str | None = "main", init_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """Load a teacher from anything `hfkd.models.resolve_model_name` accepts (Hub id, timm id, folder, alias).

    Remote code stays off unless `init_kwargs` sets `trust_remote_code=True`.
    """
    from .models import load_image_classifier, resolve_model_name

    kwargs = dict(init_kwargs or {})
    trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
    spec = resolve_model_name(name_or_path, revision=revision)
    logger.info(f"Loading teacher {name_or_path!r} -> {spec.source} ({spec.kind}, revision {revision!r})")
    return load_image_classifier(spec, role="teacher", trust_remote_code=trust_remote_code, **kwargs)


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put `model` in eval mode (no dropout, BatchNorm running statistics)."""
    model.requires_grad_(False)
    return model.eval()


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


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
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return name or fallback


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
        raise ValueError(
            f"--teacher_label_map has no entry for dataset class(es) {missing[:10]}; map every dataset class "
            "to a teacher class name or index."
        )
    indices = []
    for name in dataset_names:
        target = label_map[name]
        index = target if isinstance(target, int) else teacher_ids.get(str(target).lower())
        if index is None or not 0 <= index < num_teacher:
            raise ValueError(
                f"--teacher_label_map maps {name!r} to {target!r}, which is not a class of the teacher "
                f"({num_teacher} classes, e.g. {list(teacher.config.id2label.values())[:5]})."
            )
        indices.append(index)
    return LabelMappedTeacher(teacher, indices, list(dataset_names))


def deepspeed_zero_stage(accelerator: Any) -> int | None:
    """The ZeRO stage of the run, or None without DeepSpeed."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None:
        return None
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def prepare_deepspeed_teacher(model: nn.Module, accelerator: Any) -> nn.Module:
    """Under ZeRO-3, give the frozen teacher its own DeepSpeed inference engine (its parameters sharded like the
    student's), as TRL does, instead of a second training engine: no optimizer, no scheduler, eval mode.

    Under ZeRO-1/2 there is nothing of the teacher's to shard (no gradients, no optimizer state): use
    `prepare_teacher` instead.
    """
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config.setdefault("zero_optimization", {})["stage"] = 3
    engine, *_ = deepspeed.initialize(model=freeze(model), config=config)
    engine.eval()
    return engine
