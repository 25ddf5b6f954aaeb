"""Loading and preparing the frozen teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def load_teacher(
    name_or_path: str, *, revision: str | None = "main", init_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """Load a teacher checkpoint for image classification; remote code stays off unless `init_kwargs` allows it."""
    kwargs = dict(init_kwargs or {})
    kwargs.setdefault("trust_remote_code", False)
    logger.info(f"Loading teacher {name_or_path!r} (revision {revision!r})")
    return AutoModelForImageClassification.from_pretrained(name_or_path, revision=revision, **kwargs)


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put `model` in eval mode (no dropout, BatchNorm running statistics)."""
    model.requires_grad_(False)
    return model.eval()


def prepare_teacher(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Freeze the teacher and place it on `device`.

    The teacher is deliberately not handed to `accelerator.prepare_model`: that would register it with the
    accelerator (so `save_state` would write it) and wrap its forward for good. The trainer instead runs it
    under `accelerator.autocast()`, the same mixed-precision context as the student, and never wraps it in DDP.
    """
    return freeze(model).to(device)


def teacher_id(model: nn.Module, fallback: str | None = None) -> str | None:
    """The Hub id or path the teacher was loaded from, when known."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    return name or fallback
