"""The teacher behind one small interface: loading, freezing, and the three kinds the trainer can be given.

`Teacher` is what the trainer talks to: `teacher(batch, epoch)` returns its outputs on the batch's views
(`TeacherOutputs`), `teacher.logits(batch)` its plain logits for evaluation. The trainer never asks which kind it has:

- `LiveTeacher`: a frozen model run under `no_grad` and the student's autocast, cast once to the mixed-precision
  dtype, optionally channels-last and compiled; it records what the loss's `needs` ask for (hidden states,
  pre-activation maps, the strong view);
- `DeepSpeedTeacher`: the same, its parameters sharded in a DeepSpeed inference engine (ZeRO-3);
- `CachedTeacher`: outputs read from a teacher cache (`hfkd.teacher_cache`) by sample index and epoch; the model
  never runs.

`hfkd.teachers.build_teacher` picks the kind from the trainer's arguments (`live_teacher` builds a live one); a teacher
ensemble (`hfkd.ensemble.EnsembleTeacher`) combines several live ones.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

from .batch import SAMPLE_INDEX, STRONG_PIXEL_VALUES, teacher_pixels
from .cache_store import TeacherCache
from .features import PreactivationRecorder, run_for_loss
from .local_names import is_local_path, neutral_name
from .losses import LossNeeds, logits_of
from .models import load_image_classifier, resolve_model_name
from .provenance import describe_provenance, teacher_provenance

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------- loading


def load_teacher(
    name_or_path: str, *, revision: str | None = "main", init_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """Load a teacher from anything `hfkd.models.resolve_model_name` accepts (Hub id, timm id, folder, alias).

    Remote code stays off unless `init_kwargs` sets `trust_remote_code=True`.
    """
    kwargs = dict(init_kwargs or {})
    trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
    spec = resolve_model_name(name_or_path, revision=revision)
    logger.info(f"Loading teacher {name_or_path!r} -> {spec.source} ({spec.kind}, revision {revision!r})")
    return load_image_classifier(spec, trust_remote_code=trust_remote_code, **kwargs)


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


# ---------------------------------------------------------------------------------------------- the interface


@dataclass
class TeacherOutputs:
    """The teacher's outputs for one batch: on the batch's view, and on its strong view when the loss needs one."""

    main: Any
    strong: Any = None


class Teacher:
    """What the trainer needs of a teacher. Subclasses set `model` (the live module, or `None`) and implement
    `__call__` and `logits`; `record()` describes the teacher for `distill_config.json` and the model card."""

    model: nn.Module | None = None

    @classmethod
    def unsupported(cls, needs: LossNeeds) -> list[str]:
        """What of `needs` this kind of teacher cannot provide (empty: everything)."""
        return []

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        raise NotImplementedError

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits on the batch's view: evaluation."""
        raise NotImplementedError

    def eval_logits(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What evaluation scores, by metric-name infix: the teacher's logits (`""`); an ensemble adds its members'."""
        return {"": self.logits(batch)}

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a training set this teacher cannot serve (a cache of another size); nothing to check by default."""

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)

    @property
    def num_labels(self) -> int | None:
        return getattr(self.config, "num_labels", None)

    @property
    def id2label(self) -> Mapping[int, str] | None:
        return getattr(self.config, "id2label", None)

    def record(self) -> dict[str, Any]:
        raise NotImplementedError


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

    def _run(self, pixel_values: torch.Tensor, for_loss: bool) -> Any:
        # Eval mode again at every call: a user callback or `model.train()` on a container must not put the
        # teacher's BatchNorm/dropout into training mode.
        self.model.eval()
        if self.dtype is not None and pixel_values.is_floating_point() and pixel_values.dtype != self.dtype:
            pixel_values = pixel_values.to(self.dtype)  # a teacher kept in its own dtype (e.g. bf16 in fp32 training)
        with torch.no_grad(), self.autocast():
            if not for_loss:
                return self.model(pixel_values=pixel_values)
            return run_for_loss(self.model, self.recorder, self.needs.hidden_states, pixel_values=pixel_values)

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        main = self._run(teacher_pixels(batch, member=self.member), for_loss=True)
        strong = None
        if self.needs.strong_view:
            strong = self._run(teacher_pixels(batch, STRONG_PIXEL_VALUES, self.member), for_loss=True)
        return TeacherOutputs(main, strong)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return logits_of(self._run(teacher_pixels(batch, member=self.member), for_loss=False))

    def record(self) -> dict[str, Any]:
        local = bool(self.name) and is_local_path(self.name)
        return {
            "name_or_path": neutral_name(self.name),
            "local": local,
            "revision": None if local else self.revision,
            "commit": getattr(self.config, "_commit_hash", None),
            "num_labels": getattr(self.config, "num_labels", None),
            "provenance": self.origin,
        }


class DeepSpeedTeacher(LiveTeacher):
    """A `LiveTeacher` whose parameters live in a DeepSpeed ZeRO-3 inference engine (`prepare_deepspeed_teacher`)."""

    def __init__(self, model: nn.Module, needs: LossNeeds, accelerator: Any, **kwargs: Any) -> None:
        name = kwargs.pop("name", None)
        super().__init__(prepare_deepspeed_teacher(model, accelerator), needs, name=teacher_id(model, name), **kwargs)

    @property
    def config(self) -> Any:
        return getattr(getattr(self.model, "module", self.model), "config", None)


class CachedTeacher(Teacher):
    """Teacher logits read from a cache built by `python -m hfkd.teacher_cache`: the teacher never runs.

    The batch must carry `sample_index`; the student's pixels must be the cached views of those samples in the
    current epoch (`hfkd.teacher_cache.ReplayTransform`). A cache stores logits only.
    """

    def __init__(self, cache: TeacherCache | str, device: torch.device | str = "cpu") -> None:
        self.cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        self.device = device

    @classmethod
    def unsupported(cls, needs: LossNeeds) -> list[str]:
        wanted = (
            ("feature maps", needs.hidden_states),
            ("a strong view", needs.strong_view),
            ("the teacher's classifier head", needs.classifier_heads),
        )
        return [what for what, flag in wanted if flag]

    def __call__(self, batch: dict[str, Any], epoch: float) -> TeacherOutputs:
        index = batch.get(SAMPLE_INDEX)
        if index is None:
            raise ValueError("Training from a teacher cache needs `sample_index` in each batch (add_sample_index).")
        logits = self.cache.teacher_logits(math.floor(epoch), index.cpu())
        return TeacherOutputs(ImageClassifierOutput(logits=logits.to(self.device, non_blocking=True)))

    def check_dataset(self, dataset: Any) -> None:
        size = self.cache.config.num_samples
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != size:
            raise ValueError(
                f"The teacher cache {neutral_name(self.cache.path)!r} holds views of {size} training images, the "
                f"training set has {len(dataset)}: a cache serves only the training set it was built on."
            )

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        raise ValueError(
            f"The teacher cache {self.cache.path!r} holds the teacher's outputs on training views only; evaluating "
            "the teacher needs the teacher itself (pass --teacher, or --evaluate_teacher false)."
        )

    @property
    def config(self) -> Any:
        return None

    @property
    def num_labels(self) -> int:
        return self.cache.config.num_classes

    @property
    def id2label(self) -> None:
        return None

    def record(self) -> dict[str, Any]:
        config = self.cache.config
        record = {
            "name_or_path": neutral_name(config.teacher),
            "cache": neutral_name(self.cache.path),
            "top_k": config.top_k,
            "num_labels": config.num_classes,
        }
        if config.ensemble is not None:  # a cache of an ensemble's outputs: its members and how they combined
            record.update(ensemble=config.ensemble, members=config.members)
        return record


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


def live_teacher(
    source: Any, args: Any, accelerator: Any, needs: LossNeeds, *, name: str | None = None, member: int = 0
) -> LiveTeacher:
    """A `LiveTeacher` (a `DeepSpeedTeacher` under ZeRO-3) from a model or a checkpoint name, prepared as the
    trainer's arguments ask (mixed-precision dtype, channels-last, compile). `name` is where a model came from, for
    the record; `member` its place in an ensemble (which of the batch's teacher pixels it reads)."""
    name = source if isinstance(source, str) else name
    if isinstance(source, str):
        source = load_teacher(name, revision=args.teacher_model_revision, init_kwargs=args.teacher_model_init_kwargs)
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
