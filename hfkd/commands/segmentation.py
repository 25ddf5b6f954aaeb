"""The segmentation steps of `hfkd distill` (`--task semantic-segmentation`, or segmentation models): the data and
its joint transforms (`SegmentationData`, the same two steps as `ImageClassificationData`) and the models
(`load_segmentation_models`: transformers' `AutoModelForSemanticSegmentation` checkpoints, or the references'
DeepLabV3 / PSPNet networks of `hfkd.models.smp`).
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor
from transformers.utils import logging

from hfkd.commands.arguments import DataArguments, ModelArguments, RunArguments
from hfkd.commands.data import RunData, dense_class_names, dense_image_configs, dense_splits, transformed_splits
from hfkd.commands.smoke import synthetic_segmentation_dataset
from hfkd.data.transforms import ImageConfig
from hfkd.models.availability import config_num_labels
from hfkd.models.loading import ModelSpec, load_auto_model, load_image_processor
from hfkd.models.smp import reference_network
from hfkd.tasks.segmentation.data import (
    SegmentationTransform,
    check_segmentation_rows,
    detect_segmentation_columns,
    load_segmentation_dataset,
    reduce_labels_lookup,
)
from hfkd.tasks.segmentation.transforms import CropSettings
from hfkd.training.arguments import DistillationArguments
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)

SEGMENTATION_NAMES_EXAMPLE = '\'{"0": "road", "1": "sidewalk"}\'; transformers\' datasets ship an id2label.json'

DEFAULT_CROP = 512


def crop_settings(data_args: DataArguments) -> CropSettings:
    """The training crop: `--crop_size H W`, else `--image_size` square, else 512 x 512."""
    size = data_args.crop_size or [data_args.image_size or DEFAULT_CROP] * 2
    return CropSettings(
        crop_size=(int(size[0]), int(size[1])),
        scale_range=(float(data_args.scale_range[0]), float(data_args.scale_range[1])),
        scale_step=data_args.scale_step,
        ignore_index=data_args.ignore_index,
    )


class SegmentationRunData(RunData):
    """A segmentation run's data; its record adds the training crop and the mask settings."""

    def info(self, data_args: DataArguments) -> dict[str, Any]:
        crop = crop_settings(data_args)
        return {
            **super().info(data_args),
            "crop_size": list(crop.crop_size),
            "scale_range": list(crop.scale_range),
            "reduce_labels": data_args.reduce_labels or None,
            "ignore_index": data_args.ignore_index,
        }


class SegmentationData:
    """A segmentation run's data and its preprocessing, in the two steps of `ImageClassificationData`: `load()`
    reads the splits (an image and a mask column, the class names) before the models load; `splits(data, models)`
    gives each its joint transform (`hfkd.tasks.segmentation.data.SegmentationTransform`). Override `transform` to
    preprocess otherwise."""

    def __init__(
        self, data_args: DataArguments, run_args: RunArguments, args: DistillationArguments, cache: Any = None, *,
        cache_dir: str | None = None, id2label: dict[int, str] | None = None,
    ) -> None:  # fmt: skip
        if cache is not None:
            raise UsageError("A teacher cache holds a classifier's logits; segmentation runs use a live teacher.")
        if data_args.streaming or data_args.labelled_samples is not None:
            raise UsageError("--streaming and --labelled_samples are image classification's; drop them here.")
        self.data_args, self.run_args, self.args, self.cache_dir = data_args, run_args, args, cache_dir
        self.fallback_id2label = id2label
        self.lookup = None

    def load(self) -> RunData:
        """The raw splits, their image and mask columns and class names, checked (a sample of rows decoded)."""
        data_args = self.data_args
        dataset = dense_splits(data_args, self.run_args, self.args.seed, self.cache_dir,
                               synthetic=synthetic_segmentation_dataset, load=load_segmentation_dataset)  # fmt: skip
        columns = detect_segmentation_columns(dataset, data_args.image_column, data_args.label_column)
        image_column, mask_column = columns
        self.lookup = dataset.label_lookup if dataset.label_lookup is not None else None
        if data_args.reduce_labels:
            self.lookup = reduce_labels_lookup() if self.lookup is None else reduce_labels_lookup()[self.lookup]
        id2label = dense_class_names(data_args, dataset, self.fallback_id2label, SEGMENTATION_NAMES_EXAMPLE)
        names = [id2label[i] for i in range(len(id2label))]
        for split in ("train", "eval"):
            check_segmentation_rows(
                dataset[split], image_column, mask_column, len(names), lookup=self.lookup,
                ignore_index=data_args.ignore_index, split=split,
            )  # fmt: skip
        logger.info(f"Data: {dataset.source}; {len(names)} classes; masks in column {mask_column!r}")
        return SegmentationRunData(dataset, image_column, mask_column, names, dataset.source)

    def transform(self, student: ImageConfig, teachers: list[ImageConfig], *, train: bool) -> SegmentationTransform:
        """The joint image and mask pipeline of one split."""
        return SegmentationTransform(
            self.image_column, self.mask_column, student, teachers, num_labels=self.num_labels,
            crop=crop_settings(self.data_args) if train else None, lookup=self.lookup,
            ignore_index=self.data_args.ignore_index, seed=self.args.seed,
        )  # fmt: skip

    def splits(self, data: RunData, models: tuple[Any, Any, list[Any], list[Any]]) -> dict[str, Any]:
        """`{"train": ..., "eval": ...}`, each with its joint transform, for the trainer."""
        self.image_column, self.mask_column, self.num_labels = data.image_column, data.label_column, len(data.names)
        student_config, teacher_configs = dense_image_configs(models, self.data_args)
        crop = crop_settings(self.data_args)
        logger.info(
            f"Training crop {crop.crop_size[0]}x{crop.crop_size[1]}, rescale {crop.scale_range}, flip; evaluation on "
            f"whole images; student mean {student_config.mean}, std {student_config.std}."
        )
        return transformed_splits(data, functools.partial(self.transform, student_config, teacher_configs))


def _segmentation_processor(model: Any, spec: ModelSpec, trust_remote_code: bool) -> Any:
    """The image processor a saved student is used with (`pipeline("image-segmentation")`): the checkpoint's own, or
    for a reference network an ImageNet-normalising `SegformerImageProcessor` (resize to the training crop's
    size for inference, logits upsampled back by its post-processing)."""
    if spec.kind == "smp":
        return SegformerImageProcessor(do_reduce_labels=False, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225])  # fmt: skip
    return load_image_processor(spec, trust_remote_code=trust_remote_code)


def _load_one(spec: ModelSpec, *, pretrained: bool, id2label: dict[int, str] | None, ignore_index: int, **kwargs: Any):
    if spec.kind == "smp":
        model = reference_network(spec.source, num_labels=len(id2label or {}) or 19, id2label=id2label,
                                  pretrained=pretrained, semantic_loss_ignore_index=ignore_index)  # fmt: skip
    else:
        model = load_auto_model(
            AutoModelForSemanticSegmentation, spec, pretrained=pretrained, id2label=id2label, **kwargs
        )
    for name in ("semantic_loss_ignore_index", "loss_ignore_index"):  # the data's ignored pixels, in its own loss
        if hasattr(model.config, name):
            setattr(model.config, name, ignore_index)
    return model


def load_segmentation_models(
    student_spec: ModelSpec,
    teacher_specs: list[ModelSpec],
    model_args: ModelArguments,
    args: DistillationArguments,
    names: list[str],
    ignore_index: int,
) -> tuple[Any, Any, list[Any], list[Any]]:
    """(student, its processor, teachers, their processors): the student gets the data's classes; a trained
    teacher must predict them (refused from its config before its weights load)."""
    id2label = dict(enumerate(names))
    trust = {"trust_remote_code": model_args.trust_remote_code}
    for spec in teacher_specs if model_args.teacher_pretrained else []:
        classes = config_num_labels(spec)
        if classes is not None and classes != len(names):
            raise UsageError(
                f"The teacher {spec.name!r} predicts {classes} classes and the data has {len(names)}: a segmentation "
                "teacher must predict the data's classes (fine-tune it first with --loss ce)."
            )
    student = _load_one(student_spec, pretrained=model_args.student_pretrained, id2label=id2label,
                        ignore_index=ignore_index, **trust)  # fmt: skip
    teachers = [
        _load_one(spec, pretrained=model_args.teacher_pretrained, ignore_index=ignore_index,
                  id2label=None if model_args.teacher_pretrained else id2label, **trust)  # fmt: skip
        for spec in teacher_specs
    ]
    processors = [_segmentation_processor(t, s, model_args.trust_remote_code) for t, s in zip(teachers, teacher_specs)]
    return student, _segmentation_processor(student, student_spec, model_args.trust_remote_code), teachers, processors
