"""Resolve and load teacher/student image classifiers: Hub ids, timm ids, local folders, timm names, aliases.

`resolve_model_name` turns what a user typed into a `ModelSpec` without touching the network;
`load_image_classifier` loads it (replacing its head when it is given another label space); `hfkd.timm_export`
writes a timm student that loads both in transformers and in `timm.create_model`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import transformers
from timm.models import PretrainedCfg, get_pretrained_cfg
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    TimmWrapperModel,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers.utils import logging

from hfkd.models.cifar import CIFAR_ALIASES
from hfkd.models.smp import REFERENCE_NETWORKS
from hfkd.models.torchvision_detection import DETECTION_NETWORKS
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


# What users type -> the real Hub checkpoint (all ImageNet-1k classifiers). Short Hub ids that are not repos
# themselves (`microsoft/swin-large`) live here too, so there is one place to read what a name means.
MODEL_ALIASES: dict[str, str] = {
    "resnet-18": "microsoft/resnet-18",
    "resnet-34": "microsoft/resnet-34",
    "resnet-50": "microsoft/resnet-50",
    "resnet-101": "microsoft/resnet-101",
    "resnet-152": "microsoft/resnet-152",
    "wide-resnet-50": "timm/wide_resnet50_2.racm_in1k",
    "mobilenet-v1": "timm/mobilenetv1_100.ra4_e3600_r224_in1k",
    "mobilenet-v2": "google/mobilenet_v2_1.0_224",
    "mobilenet-v3-small": "timm/mobilenetv3_small_100.lamb_in1k",
    "mobilenet-v3-large": "timm/mobilenetv3_large_100.ra_in1k",
    "mobilevit-small": "apple/mobilevit-small",
    "efficientnet-b0": "google/efficientnet-b0",
    "efficientnet-b1": "google/efficientnet-b1",
    "efficientnet-b2": "google/efficientnet-b2",
    "efficientnet-b3": "google/efficientnet-b3",
    "efficientnet-b4": "google/efficientnet-b4",
    "swin-tiny": "microsoft/swin-tiny-patch4-window7-224",
    "swin-small": "microsoft/swin-small-patch4-window7-224",
    "swin-base": "microsoft/swin-base-patch4-window7-224",
    "swin-large": "microsoft/swin-large-patch4-window7-224",
    "vit-tiny": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit-small": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit-base": "google/vit-base-patch16-224",
    "vit-large": "google/vit-large-patch16-224",
    "deit-tiny": "facebook/deit-tiny-patch16-224",
    "deit-small": "facebook/deit-small-patch16-224",
    "deit-base": "facebook/deit-base-patch16-224",
    "convnext-tiny": "facebook/convnext-tiny-224",
    "convnext-small": "facebook/convnext-small-224",
    "convnext-base": "facebook/convnext-base-224",
    "convnext-large": "facebook/convnext-large-224",
    "beit-base": "microsoft/beit-base-patch16-224",
    # short Hub ids
    "microsoft/swin-tiny": "microsoft/swin-tiny-patch4-window7-224",
    "microsoft/swin-small": "microsoft/swin-small-patch4-window7-224",
    "microsoft/swin-base": "microsoft/swin-base-patch4-window7-224",
    "microsoft/swin-large": "microsoft/swin-large-patch4-window7-224",
    "google/vit-base": "google/vit-base-patch16-224",
    "google/vit-large": "google/vit-large-patch16-224",
    "google/mobilenet_v2": "google/mobilenet_v2_1.0_224",
    "facebook/deit-tiny": "facebook/deit-tiny-patch16-224",
    "facebook/deit-small": "facebook/deit-small-patch16-224",
    "facebook/deit-base": "facebook/deit-base-patch16-224",
    "facebook/convnext-tiny": "facebook/convnext-tiny-224",
    "facebook/convnext-small": "facebook/convnext-small-224",
    "facebook/convnext-base": "facebook/convnext-base-224",
    "facebook/convnext-large": "facebook/convnext-large-224",
}

# The CIFAR-100 zoo (timm architectures registered by hfkd.models.cifar) under mdistiller's names.
MODEL_ALIASES.update({alias.lower(): name for alias, name in CIFAR_ALIASES.items()})

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


_TIMM_PREFIX = "timm_model."


_ACCEPTED_FORMS = (
    "a transformers Hub id (`microsoft/resnet-50`), a timm Hub id (`timm/resnet18.a1_in1k`), a local folder "
    "written by `save_pretrained`, a timm architecture name (`resnet18`, see `timm.list_models()`), or an alias "
    "(`hfkd.models.MODEL_ALIASES`: " + ", ".join(k for k in MODEL_ALIASES if "/" not in k) + "; segmentation: "
    + ", ".join(REFERENCE_NETWORKS) + "; detection: " + ", ".join(DETECTION_NETWORKS) + ")"
)


@dataclass(frozen=True)
class ModelSpec:
    """
    Where a model comes from, as resolved by [`resolve_model_name`].

    Args:
        name (`str`): What the user typed.
        source (`str`): The resolved Hub id, absolute local path, or timm architecture name.
        kind (`str`): One of `"hub"`, `"timm_hub"`, `"local"`, `"timm_arch"`, `"smp"` (a reference segmentation
            network of `hfkd.models.smp`, built by segmentation-models-pytorch) or `"torchvision"` (a Faster R-CNN /
            RetinaNet of `hfkd.models.torchvision_detection`).
        revision (`str`, *optional*): Hub revision (branch, tag or commit); `None` for local folders.
        is_timm (`bool`): Whether the model loads through `TimmWrapperForImageClassification`.
        local_files_only (`bool`): Load from the local Hugging Face cache only (`hfkd.hub.check_available` sets it
            when the Hub cannot be reached but the files are cached).
    """

    name: str
    source: str
    kind: str
    revision: str | None
    is_timm: bool
    local_files_only: bool = False


def _is_timm_config(config: dict[str, Any]) -> bool:
    return "architecture" in config or "pretrained_cfg" in config or config.get("model_type") == "timm_wrapper"


def _resolve_local(name: str, path: Path) -> ModelSpec:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(
            f"Model folder {str(path)!r} (from {name!r}) has no config.json. Point to a folder written by "
            "`model.save_pretrained(...)` (it holds config.json and model.safetensors)."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return ModelSpec(name=name, source=str(path), kind="local", revision=None, is_timm=_is_timm_config(config))


def resolve_model_name(name: str, *, revision: str | None = None) -> ModelSpec:
    """
    Resolve a `--teacher`/`--student` value to a [`ModelSpec`], offline and without loading weights.

    Order: an existing local folder, an alias of `MODEL_ALIASES` (case-insensitive), a Hub id (`org/name`,
    `timm/...` ids load through timm), a timm architecture name accepted by `timm.is_model`.

    Args:
        name (`str`): What the user typed.
        revision (`str`, *optional*): Hub revision; ignored (with a warning) for local folders and timm names.

    Returns:
        [`ModelSpec`]: The resolved source.

    Raises:
        `ValueError`: The name matches none of the accepted forms (the message lists close matches), or a local
            folder lacks config.json.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"Expected a model name, got {name!r}. Pass {_ACCEPTED_FORMS}.")
    name = name.strip()
    path = Path(name).expanduser()
    if path.is_dir():
        spec = _resolve_local(name, path.resolve())
        if revision not in (None, "main"):
            logger.warning(f"Ignoring revision={revision!r} for the local folder {spec.source!r}.")
    elif name.lower() in REFERENCE_NETWORKS:  # DIST's / CWD's segmentation networks, built by smp
        spec = ModelSpec(name, name.lower(), "smp", None, False)
    elif name.lower() in DETECTION_NETWORKS:  # Faster R-CNN / RetinaNet, built by torchvision
        spec = ModelSpec(name, name.lower(), "torchvision", None, False)
    elif name.lower() in MODEL_ALIASES:
        target = MODEL_ALIASES[name.lower()]
        if "/" not in target:  # a timm architecture (the CIFAR zoo): random init or a local checkpoint
            spec = ModelSpec(name, target, "timm_arch", None, True)
        else:
            is_timm = target.startswith("timm/")
            spec = ModelSpec(name, target, "timm_hub" if is_timm else "hub", revision, is_timm)
    elif _HUB_ID.match(name):
        # A Hub id cannot be verified offline; a wrong one fails in `from_pretrained` with the Hub's own error.
        is_timm = name.startswith("timm/")
        spec = ModelSpec(name, name, "timm_hub" if is_timm else "hub", revision, is_timm)
    elif "/" not in name and timm.is_model(name):
        if revision not in (None, "main"):
            logger.warning(f"Ignoring revision={revision!r} for the timm architecture {name!r}.")
        spec = ModelSpec(name, name, "timm_arch", None, True)
    else:
        candidates = {k.lower(): k for k in MODEL_ALIASES} | {m: m for m in timm.list_models()}
        candidates |= {m: m for m in [*REFERENCE_NETWORKS, *DETECTION_NETWORKS]}
        close = [candidates[m] for m in difflib.get_close_matches(name.lower(), list(candidates), n=5, cutoff=0.6)]
        what = "no local folder" if any(sep in name for sep in ("/", os.sep)) else "no alias or timm model"
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UsageError(f"Unknown model {name!r}: {what} of that name.{hint} Pass {_ACCEPTED_FORMS}.")
    logger.info(f"Model {name!r} resolved to {spec.source!r} ({spec.kind}{', timm' if spec.is_timm else ''}).")
    return spec


def _label_kwargs(num_labels: int | None, id2label: dict[int, str] | None) -> dict[str, Any]:
    if id2label is None:
        return {} if num_labels is None else {"num_labels": num_labels}
    id2label = {int(i): str(label) for i, label in id2label.items()}
    if num_labels is not None and len(id2label) != num_labels:
        raise UsageError(f"id2label has {len(id2label)} entries but num_labels={num_labels}. Pass one name per class.")
    label2id = {label: i for i, label in id2label.items()}
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}


def _timm_pretrained_cfg(architecture: str) -> dict[str, Any]:
    """timm's default preprocessing config for `architecture`, in the JSON shape Hub timm checkpoints use."""
    cfg = get_pretrained_cfg(architecture) or PretrainedCfg(architecture=architecture)
    keep_null = {"pool_size", "first_conv", "classifier"}
    # The source keys describe timm's released weights, not ours; dropping them keeps a saved folder honest.
    drop = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "architecture"}
    return {k: v for k, v in cfg.to_dict().items() if k not in drop and (v is not None or k in keep_null)}


def _with_timm_init(model: TimmWrapperForImageClassification) -> TimmWrapperForImageClassification:
    """Restore timm's own initialisation of a randomly initialised TimmWrapper model.

    transformers re-initialises the wrapped model with its generic scheme (conv std 0.02, BatchNorm reset); a model
    trained from scratch should start from timm's initialisation, as the reference code does.
    """
    config = model.config
    fresh = timm.create_model(
        config.architecture, pretrained=False, num_classes=config.num_labels, **(config.model_args or {})
    )
    model.timm_model.load_state_dict(fresh.state_dict())
    return model


def _check_timm_drop_path(name: str, architecture: str, model_args: dict[str, Any]) -> None:
    """Build `architecture` on the meta device (no memory, no weights) to see that timm takes its drop-path rate."""
    try:
        with torch.device("meta"):
            timm.create_model(architecture, pretrained=False, **model_args)
    except TypeError as err:
        raise UsageError(
            f"{name!r} (timm {architecture!r}) takes no drop_path_rate ({err}): it has no stochastic depth to set. "
            "Drop --drop_path_rate for this student."
        ) from None


def _drop_path_kwargs(spec: ModelSpec, config: Any, rate: float | None) -> dict[str, Any]:
    """The config change that sets a student's stochastic depth: timm's `drop_path_rate` model argument (for a timm
    model), or `config.drop_path_rate` (transformers' Swin, ConvNeXt, BEiT, ...); refused for a model with neither."""
    if rate is None:
        return {}
    if isinstance(config, TimmWrapperConfig):
        model_args = {**(config.model_args or {}), "drop_path_rate": rate}
        _check_timm_drop_path(spec.name, config.architecture, model_args)
        return {"model_args": model_args}
    if not hasattr(config, "drop_path_rate"):
        raise UsageError(
            f"{spec.name!r} ({type(config).__name__}) has no drop_path_rate in its config: it has no stochastic depth "
            "to set. Drop --drop_path_rate, or pick a student with one (timm models, Swin, ConvNeXt, BEiT, ...)."
        )
    return {"drop_path_rate": rate}


def load_image_classifier(
    spec_or_name: ModelSpec | str,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    pretrained: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
    drop_path_rate: float | None = None,
    **init_kwargs: Any,
) -> PreTrainedModel:
    """
    Load an image classifier from anything [`resolve_model_name`] accepts.

    Given `num_labels` (a student, or a randomly initialised model), a checkpoint with another number of classes
    gets a fresh, randomly initialised head (`ignore_mismatched_sizes=True`) and a warning. Without them the
    checkpoint's head is kept: a teacher is loaded that way, and its label space is checked, never replaced
    ([`hfkd.teacher.check_label_space`]). A bare timm architecture loads timm's default pretrained tag from the Hub
    (`resnet18` -> `timm/resnet18.a1_in1k`), or builds a random-init model offline with `pretrained=False`.

    Args:
        spec_or_name (`ModelSpec` or `str`): The model.
        num_labels (`int`, *optional*): Number of dataset classes; the head is replaced when it has another.
        id2label (`dict[int, str]`, *optional*): Dataset class names; also sets `label2id`.
        pretrained (`bool`, *optional*, defaults to `True`): Load weights; `False` builds the architecture with
            random weights from its config.
        trust_remote_code (`bool`, *optional*, defaults to `False`): Passed to `from_pretrained`.
        revision (`str`, *optional*): Hub revision; overrides the spec's.
        drop_path_rate (`float`, *optional*): Stochastic depth rate (timm's `drop_path_rate` model argument, or
            `config.drop_path_rate`); a model without one is refused before any weight loads.
        init_kwargs: Passed to `from_pretrained` / `from_config` (e.g. `dtype`), or to `TimmWrapperConfig`
            (e.g. `model_args`) for a random-init timm architecture.

    Returns:
        [`~transformers.PreTrainedModel`]: The classifier.
    """
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else resolve_model_name(spec_or_name)
    revision = revision if revision is not None else spec.revision
    labels = _label_kwargs(num_labels, id2label)
    if spec.kind == "timm_arch" and not pretrained:
        return _random_timm_architecture(spec, labels, drop_path_rate, init_kwargs)
    source = _timm_default_weights(spec) if spec.kind == "timm_arch" else spec.source

    local = {"local_files_only": True} if spec.local_files_only else {}
    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **local)
    drop_path = _drop_path_kwargs(spec, config, drop_path_rate)
    if not pretrained:
        return _random_from_config(source, config, {**labels, **drop_path}, trust_remote_code, init_kwargs)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, **local, **drop_path, **init_kwargs}
    return _from_pretrained(spec, source, config, labels, kwargs)


def _random_timm_architecture(
    spec: ModelSpec, labels: dict[str, Any], drop_path_rate: float | None, init_kwargs: dict[str, Any]
) -> TimmWrapperForImageClassification:
    """A bare timm architecture with random weights (timm's own initialisation) and timm's default preprocessing;
    1000 classes unless `labels` say otherwise."""
    config = TimmWrapperConfig(
        architecture=spec.source,
        pretrained_cfg=_timm_pretrained_cfg(spec.source),
        **(labels or {"num_labels": 1000}),
        **init_kwargs,
    )
    for key, value in _drop_path_kwargs(spec, config, drop_path_rate).items():
        setattr(config, key, value)
    logger.info(f"Building timm {spec.source!r} ({config.num_labels} classes) with random weights.")
    return _with_timm_init(TimmWrapperForImageClassification(config))


def _timm_default_weights(spec: ModelSpec) -> str:
    """The Hub id of timm's default pretrained weights for a bare timm architecture; refused when there are none."""
    cfg = get_pretrained_cfg(spec.source)
    if cfg is None or not (cfg.hf_hub_id or "").count("/"):
        raise UsageError(
            f"timm has no Hub weights for {spec.source!r}. Pass pretrained=False for random init, or a Hub id."
        )
    logger.info(f"timm architecture {spec.source!r} loads its default pretrained weights {cfg.hf_hub_id!r}.")
    return cfg.hf_hub_id


def load_auto_model(
    auto_class: Any, spec: ModelSpec, *, pretrained: bool, id2label: dict[int, str] | None, **kwargs: Any
) -> PreTrainedModel:
    """`spec` through a transformers Auto class (`AutoModelForSemanticSegmentation`, `AutoModelForObjectDetection`):
    its checkpoint, or with `pretrained=False` its config with random weights. With `id2label` the model gets those
    classes (a new head where the checkpoint has others); without, its own. `kwargs` (`trust_remote_code`) go to
    `from_pretrained`."""
    labels = _label_kwargs(None, id2label)
    local = {"local_files_only": True} if spec.local_files_only else {}
    if not pretrained:
        config = AutoConfig.from_pretrained(spec.source, revision=spec.revision, **local, **labels)
        return auto_class.from_config(config)
    mismatched = {"ignore_mismatched_sizes": True} if labels else {}
    return auto_class.from_pretrained(spec.source, revision=spec.revision, **local, **labels, **mismatched, **kwargs)


def _random_from_config(
    source: str, config: Any, changes: dict[str, Any], trust_remote_code: bool, init_kwargs: dict[str, Any]
) -> PreTrainedModel:
    """The architecture of `config`, with `changes` (labels, drop path) set, and random weights."""
    for key, value in changes.items():
        setattr(config, key, value)
    logger.info(f"Building {source!r} ({config.num_labels} classes) with random weights.")
    model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code, **init_kwargs)
    return _with_timm_init(model) if getattr(model, "timm_model", None) is not None else model


def _from_pretrained(
    spec: ModelSpec, source: str, config: Any, labels: dict[str, Any], kwargs: dict[str, Any]
) -> PreTrainedModel:
    """The checkpoint `source` with its own head, or a fresh head (and a warning) when `labels` ask for another
    number of classes."""
    if labels.get("num_labels", config.num_labels) != config.num_labels:
        logger.warning(
            f"Replacing the classification head of {spec.name!r}: {config.num_labels} -> "
            f"{labels['num_labels']} classes (new head randomly initialised)."
        )
        kwargs["ignore_mismatched_sizes"] = True
    elif "id2label" not in labels:
        labels = {}  # same head and no names given: keep the checkpoint's own class names
    model_cls = TimmWrapperForImageClassification if spec.is_timm else AutoModelForImageClassification
    return model_cls.from_pretrained(source, **labels, **kwargs)


def load_backbone(
    spec_or_name: ModelSpec | str,
    *,
    pretrained: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
    drop_path_rate: float | None = None,
    **init_kwargs: Any,
) -> PreTrainedModel:
    """
    Load a model without its head (label-free distillation's teacher and student) from anything
    [`resolve_model_name`] accepts:

    - a timm architecture, timm Hub id or timm folder: `TimmWrapperModel` (timm's `num_classes=0`: `forward_head`
      gives the pooled features), with timm's own initialisation when built with random weights;
    - a checkpoint whose config holds a `vision_config` (CLIP, SigLIP): its vision tower (`CLIPVisionModel`,
      `SiglipVisionModel`), the text tower left out;
    - any other checkpoint: `AutoModel` (a classifier's checkpoint gives its backbone; the head's weights are left
      out, with transformers' warning).

    Args are those of [`load_image_classifier`] without the label space: a backbone has none.
    """
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else resolve_model_name(spec_or_name)
    revision = revision if revision is not None else spec.revision
    if spec.kind == "timm_arch" and not pretrained:
        config = TimmWrapperConfig(
            architecture=spec.source, pretrained_cfg=_timm_pretrained_cfg(spec.source), num_labels=0, **init_kwargs
        )
        for key, value in _drop_path_kwargs(spec, config, drop_path_rate).items():
            setattr(config, key, value)
        return _with_timm_init(TimmWrapperModel(config))
    source = _timm_default_weights(spec) if spec.kind == "timm_arch" else spec.source
    local = {"local_files_only": True} if spec.local_files_only else {}
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code, **local}
    config = AutoConfig.from_pretrained(source, **kwargs)
    model_cls: Any = TimmWrapperModel if spec.is_timm or isinstance(config, TimmWrapperConfig) else AutoModel
    vision = getattr(config, "vision_config", None)
    if vision is not None and vision.model_type in MODEL_MAPPING_NAMES:  # CLIP, SigLIP: the vision tower alone
        model_cls, config = getattr(transformers, MODEL_MAPPING_NAMES[vision.model_type]), vision
    changes = _drop_path_kwargs(spec, config, drop_path_rate)
    if pretrained:
        model = model_cls.from_pretrained(source, **kwargs, **changes, **init_kwargs)
    else:
        for key, value in {**changes, **({"num_labels": 0} if model_cls is TimmWrapperModel else {})}.items():
            setattr(config, key, value)
        model = AutoModel.from_config(config) if model_cls is AutoModel else model_cls(config)
    if isinstance(model, TimmWrapperModel):
        model.config.num_labels = 0  # timm's num_classes=0: what timm.create_model("local-dir:...") must build
        model = model if pretrained else _with_timm_init(model)
    return model


def load_image_processor(
    spec_or_name: ModelSpec | str, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """
    Load the image processor matching a model; a bare timm architecture gets timm's default preprocessing.

    Args:
        spec_or_name (`ModelSpec` or `str`): The model.
        revision (`str`, *optional*): Hub revision; overrides the spec's.
        trust_remote_code (`bool`, *optional*, defaults to `False`): Passed to `AutoImageProcessor`.

    Returns:
        The image processor (`TimmWrapperImageProcessor` for timm models).
    """
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else resolve_model_name(spec_or_name)
    if spec.kind == "timm_arch":
        from transformers import TimmWrapperImageProcessor

        return TimmWrapperImageProcessor(pretrained_cfg=_timm_pretrained_cfg(spec.source), architecture=spec.source)
    revision = revision if revision is not None else spec.revision
    local = {"local_files_only": True} if spec.local_files_only else {}
    return AutoImageProcessor.from_pretrained(
        spec.source, revision=revision, trust_remote_code=trust_remote_code, **local
    )
