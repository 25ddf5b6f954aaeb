"""A live teacher under DeepSpeed ZeRO-3: its parameters sharded in an inference engine of its own (as TRL does), not
in a second training engine."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from hfkd.losses import LossNeeds
from hfkd.teachers.live import LiveTeacher, freeze, teacher_id


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
    import deepspeed  # optional dependency: hfkd[deepspeed]

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config.setdefault("zero_optimization", {})["stage"] = 3
    engine, *_ = deepspeed.initialize(model=freeze(model), config=config)
    engine.eval()
    return engine


class DeepSpeedTeacher(LiveTeacher):
    """A `LiveTeacher` whose parameters live in a DeepSpeed ZeRO-3 inference engine (`prepare_deepspeed_teacher`)."""

    def __init__(self, model: nn.Module, needs: LossNeeds, accelerator: Any, **kwargs: Any) -> None:
        name = kwargs.pop("name", None)
        super().__init__(prepare_deepspeed_teacher(model, accelerator), needs, name=teacher_id(model, name), **kwargs)

    @property
    def config(self) -> Any:
        return getattr(getattr(self.model, "module", self.model), "config", None)
