"""The object-detection steps of `hfkd distill` (`--task object-detection`, or detection models): the data and its
box-safe transforms (`DetectionData`, the same two steps as `ImageClassificationData`) and the models
(`load_detection_models`: transformers' `AutoModelForObjectDetection` checkpoints of the DETR family, and
torchvision's Faster R-CNN / RetinaNet by name (`fasterrcnn_resnet50_fpn`, ...) or from a folder hfkd saved).
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import AutoModelForObjectDetection
from transformers.utils import logging

from hfkd.commands.arguments import DataArguments, ModelArguments, RunArguments
from hfkd.commands.data import RunData, dense_class_names, dense_image_configs, dense_splits, transformed_splits
from hfkd.commands.smoke import synthetic_detection_dataset
from hfkd.data.datasets import labelled_rows
from hfkd.data.transforms import ImageConfig
from hfkd.models.availability import config_num_labels, model_config
from hfkd.models.loading import ModelSpec, load_auto_model, load_image_processor
from hfkd.models.torchvision_detection import DETECTION_NETWORKS, torchvision_detector
from hfkd.tasks.detection.data import DetectionTransform, check_detection_rows, detect_detection_columns
from hfkd.tasks.detection.datasets import load_detection_dataset
from hfkd.tasks.detection.task import require_detection_extra
from hfkd.tasks.detection.torchvision_distill import check_detector_losses
from hfkd.training.arguments import DistillationArguments
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


class DetectionRunData(RunData):
    """A detection run's data; its record adds the training sizes."""

    def info(self, data_args: DataArguments) -> dict[str, Any]:
        sizes = {"image_size": data_args.image_size} if data_args.image_size else {
            "shortest_edge": list(data_args.shortest_edge), "longest_edge": data_args.longest_edge,
        }  # fmt: skip
        return {**super().info(data_args), **sizes}


class DetectionData:
    """A detection run's data and its preprocessing, in the two steps of `ImageClassificationData`: `load()` reads
    the splits (an image and an `objects` column, the class names) and checks every row's boxes before the models
    load; `splits(data, models)` gives each its box-safe transform (`DetectionTransform`). Override `transform` to
    preprocess otherwise."""

    def __init__(
        self, data_args: DataArguments, run_args: RunArguments, args: DistillationArguments, cache: Any = None, *,
        cache_dir: str | None = None, id2label: dict[int, str] | None = None,
    ) -> None:  # fmt: skip
        if cache is not None:
            raise UsageError("A teacher cache holds a classifier's logits; detection runs use a live teacher.")
        if data_args.streaming:
            raise UsageError("--streaming is image classification's; drop it for object detection.")
        require_detection_extra()
        self.data_args, self.run_args, self.args, self.cache_dir = data_args, run_args, args, cache_dir
        self.fallback_id2label = id2label

    def load(self) -> RunData:
        """The raw splits, their image and objects columns and class names, every row's boxes checked."""
        data_args = self.data_args
        dataset = dense_splits(data_args, self.run_args, self.args.seed, self.cache_dir,
                               synthetic=synthetic_detection_dataset, load=load_detection_dataset)  # fmt: skip
        image_column, objects_column = detect_detection_columns(
            dataset["train"], data_args.image_column, data_args.label_column
        )
        id2label = dense_class_names(data_args, dataset, self.fallback_id2label, '\'{"0": "person", "1": "car"}\'')
        names = [id2label[i] for i in range(len(id2label))]
        for split in ("train", "eval"):
            check_detection_rows(dataset[split], image_column, objects_column, len(names), split=split)
        self.unlabelled = self._labelled_subset(dataset)
        logger.info(f"Data: {dataset.source}; {len(names)} classes; boxes in column {objects_column!r}")
        return DetectionRunData(dataset, image_column, objects_column, names, dataset.source)

    def _labelled_subset(self, dataset: Any) -> frozenset[int]:
        """`--labelled_samples N`: the training rows whose boxes are not used (the teacher's detections are their
        targets); without a teacher they are dropped instead."""
        count = self.data_args.labelled_samples
        if count is None:
            return frozenset()
        keep = labelled_rows(len(dataset["train"]), count, seed=self.args.seed)
        if not self.args.uses_teacher:
            dataset["train"] = dataset["train"].select(keep)
            logger.info(f"Boxes kept for {count} training images; the rest are dropped (no teacher)")
            return frozenset()
        threshold = self.args.distill_pseudo_label_threshold
        logger.info(f"Boxes kept for {count} training images; the others: the teacher's detections above {threshold}")
        return frozenset(range(len(dataset["train"]))) - frozenset(keep.tolist())

    def transform(self, student: ImageConfig, teachers: list[ImageConfig], *, train: bool) -> DetectionTransform:
        """The box-safe image pipeline of one split."""
        data_args = self.data_args
        return DetectionTransform(
            self.image_column, self.objects_column, student, teachers, num_labels=self.num_labels, train=train,
            scales=data_args.shortest_edge, max_size=data_args.longest_edge, image_size=data_args.image_size,
            seed=self.args.seed, unlabelled=self.unlabelled,
        )  # fmt: skip

    def splits(self, data: RunData, models: tuple[Any, Any, list[Any], list[Any]]) -> dict[str, Any]:
        """`{"train": ..., "eval": ...}`, each with its transform, for the trainer; the student's image processor is
        set to resize as evaluation does, so that the saved student preprocesses in `pipeline("object-detection")`
        as it was evaluated."""
        self.image_column, self.objects_column, self.num_labels = data.image_column, data.label_column, len(data.names)
        student_config, teacher_configs = dense_image_configs(models, self.data_args)
        _match_processor(models[1], self.data_args, student_config)
        _match_sizes(models[0], self.data_args)
        return transformed_splits(data, functools.partial(self.transform, student_config, teacher_configs))


def _match_processor(processor: Any, data_args: DataArguments, image: ImageConfig) -> None:
    if processor is None:
        return
    size = {"height": data_args.image_size, "width": data_args.image_size} if data_args.image_size else {
        "shortest_edge": max(data_args.shortest_edge), "longest_edge": data_args.longest_edge,
    }  # fmt: skip
    processor.size, processor.image_mean, processor.image_std = size, list(image.mean), list(image.std)


def _match_sizes(student: Any, data_args: DataArguments) -> None:
    """A torchvision student's own preprocessing (`model.detector` used alone) resizes as the run trained it."""
    config = student.config
    if getattr(config, "model_type", None) == "hfkd_torchvision_detection":
        shorter = data_args.image_size or max(data_args.shortest_edge)
        config.min_size, config.max_size = shorter, data_args.image_size or data_args.longest_edge
        student.detector.transform.min_size, student.detector.transform.max_size = (shorter,), config.max_size


def spec_family(spec: ModelSpec) -> str:
    """A detector's family read without its weights: `"faster_rcnn"`, `"retinanet"` (torchvision) or `"detr"`."""
    if spec.kind == "torchvision":
        return DETECTION_NETWORKS[spec.source][0]
    network = model_config(spec).get("network") if spec.kind == "local" else None
    return DETECTION_NETWORKS[network][0] if network in DETECTION_NETWORKS else "detr"


def _load_detector(spec: ModelSpec, role: str, *, pretrained: bool, id2label: dict[int, str] | None, **kwargs: Any):
    if spec.kind == "torchvision":
        return torchvision_detector(spec.source, id2label=id2label, pretrained=pretrained, role=role)
    return load_auto_model(AutoModelForObjectDetection, spec, pretrained=pretrained, id2label=id2label, **kwargs)


def _processor(spec: ModelSpec, trust_remote_code: bool) -> Any:
    if spec.kind == "torchvision":  # torchvision's detectors normalise with ImageNet's mean/std, as DETR's processor
        from transformers import DetrImageProcessor

        return DetrImageProcessor()
    try:
        return load_image_processor(spec, trust_remote_code=trust_remote_code)
    except OSError:  # a folder saved from a config alone: DETR's processor, which the pipeline takes
        from transformers import DetrImageProcessor

        logger.warning(f"{spec.name!r} has no image processor: using DetrImageProcessor (ImageNet mean/std).")
        return DetrImageProcessor()


def load_detection_models(
    student_spec: ModelSpec,
    teacher_specs: list[ModelSpec],
    model_args: ModelArguments,
    args: DistillationArguments,
    names: list[str],
) -> tuple[Any, Any, list[Any], list[Any]]:
    """(student, its processor, teachers, their processors): the student gets the data's classes (a new head when
    its checkpoint has others); a trained teacher must predict them (refused from its config before its weights
    load)."""
    id2label = dict(enumerate(names))
    trust = {"trust_remote_code": model_args.trust_remote_code}
    if args.uses_teacher:
        check_detector_losses(args.distill_loss, args.distill_feature_loss, spec_family(student_spec),
                              spec_family(teacher_specs[0]) if teacher_specs else None)  # fmt: skip
    for spec in teacher_specs if model_args.teacher_pretrained else []:
        classes = config_num_labels(spec)
        if classes is not None and classes != len(names):
            raise UsageError(
                f"The teacher {spec.name!r} predicts {classes} classes and the data has {len(names)}: a detection "
                "teacher must predict the data's classes (fine-tune it first with --loss ce)."
            )
    student = _load_detector(student_spec, "student", pretrained=model_args.student_pretrained, id2label=id2label,
                             **trust)  # fmt: skip
    teachers = [
        _load_detector(
            spec,
            "teacher",
            pretrained=model_args.teacher_pretrained,
            id2label=id2label if spec.kind == "torchvision" or not model_args.teacher_pretrained else None,
            **trust,
        )  # fmt: skip
        for spec in teacher_specs
    ]
    processors = [_processor(spec, model_args.trust_remote_code) for spec in teacher_specs]
    return student, _processor(student_spec, model_args.trust_remote_code), teachers, processors
