"""The tasks hfkd trains, by name: `get_task(name)` builds one, `task_of_config` reads a model's task from its config
(its `architectures`, else its `model_type`) without weights, `resolve_task` decides a run's task from its arguments
and student. A new task adds its `Task` subclass to `TASKS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hfkd.models.embeddings import is_backbone_class
from hfkd.tasks.base import CLASSIFICATION, DETECTION, FEATURES, SEGMENTATION, Task, ignore_index_of
from hfkd.tasks.classification import ClassificationTask
from hfkd.tasks.detection.task import DetectionTask
from hfkd.tasks.features.task import FeatureExtractionTask
from hfkd.tasks.segmentation.task import SegmentationTask
from hfkd.utils.errors import UnknownNameError, UsageError
from hfkd.utils.wording import with_article

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (ClassificationTask, SegmentationTask, DetectionTask, FeatureExtractionTask)
}
# The tasks read from a model's class name or config by their suffix; a backbone (no suffix) may start any task.
_SUFFIXED = [task for task in TASKS.values() if task.model_suffix]


def get_task(name: str, **options: Any) -> Task:
    """The task of that name (`image-classification`, `semantic-segmentation`, ...), built with `options`."""
    if name not in TASKS:
        raise UnknownNameError(f"Unknown task {name!r}; hfkd trains {', '.join(TASKS)}.")
    return TASKS[name](**options)


def task_of_config(config: Any) -> str | None:
    """The task a model config's model does, from its `architectures` (`SegformerForSemanticSegmentation`, ...) or
    its `model_type`; `None` when the config does not tell (a bare backbone, a config without architectures)."""
    get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    for architecture in get("architectures", None) or []:
        for task in _SUFFIXED:
            if architecture.endswith(task.model_suffix) or architecture.endswith(f"{task.model_suffix}WithTeacher"):
                return task.name
        if architecture.endswith("ForUniversalSegmentation"):
            return SEGMENTATION
    model_type = get("model_type", None)
    if model_type == "hfkd_smp":
        return SEGMENTATION
    if model_type == "hfkd_torchvision_detection":
        return DETECTION
    if model_type == "timm_wrapper" or get("architecture", None) or get("pretrained_cfg", None):
        return CLASSIFICATION
    return None


def resolve_task(args: Any, model: Any, teacher: Any = None) -> Task:
    """The task of a run: `args.distill_task` (`--task`) or the student's (image-feature-extraction when either
    model object is a backbone without a head), refused when they disagree or when the distillation loss does not
    serve it; built with the student's class names and ignore index."""
    found = task_of_model(model) if model is not None else None
    if teacher is not None and task_of_model(teacher) == FEATURES:  # a classifier student is refused by name later
        found = FEATURES
    wanted = getattr(args, "distill_task", None)
    if wanted and found and found != wanted:
        raise UsageError(
            f"--task {wanted} was given, but the student ({type(model).__name__}) is {with_article(found)} model: "
            f"pass {with_article(wanted)} student, or drop --task (it is read from the models)."
        )
    name = wanted or found or CLASSIFICATION
    if hasattr(args, "check_task"):
        args.check_task(name)
    config = getattr(model, "config", None)
    options: dict[str, Any] = {"id2label": getattr(config, "id2label", None)}
    if name not in (CLASSIFICATION, FEATURES):
        options["ignore_index"] = ignore_index_of(config, getattr(args, "distill_ignore_index", 255))
        options["logits_size"] = getattr(args, "distill_logits_size", "teacher")
    if name in (DETECTION, FEATURES):
        options["feature_loss"] = getattr(args, "distill_feature_loss", None)
        options["feature_loss_kwargs"] = getattr(args, "distill_feature_loss_kwargs", None)
    if name == DETECTION:
        options["pseudo_label_threshold"] = getattr(args, "distill_pseudo_label_threshold", 0.5)
    return get_task(name, **options)


def task_of_model(model: Any) -> str | None:
    """The task of a loaded model: its class name (a backbone without a head: image-feature-extraction), else its
    config."""
    name = type(model).__name__
    for task in _SUFFIXED:
        if task.model_suffix in name:
            return task.name
    if is_backbone_class(name) and getattr(model, "config", None) is not None:
        return FEATURES
    return task_of_config(getattr(model, "config", None) or {})
