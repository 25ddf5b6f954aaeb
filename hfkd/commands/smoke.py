"""Smoke mode: run any recipe for two steps on synthetic data of its shape and class count, offline.

`examples/run_image_distill.py --config <recipe> --smoke` exercises a recipe's whole path (parsing, models, loss,
transforms, trainer, saving, model card) without its dataset or downloaded weights:

- the data are random images of the dataset's resolution and class count (`SMOKE_DATASETS`, or
  `--smoke_image_size` / `--smoke_num_labels` for other datasets);
- a timm model (`timm/resnet18.tv_in1k`, an alias to one, a timm name) is built from timm's own config with random
  weights; a teacher folder that a recipe expects from an earlier run (`runs/cifar100/teachers/resnet32x4`) is
  replaced by a random-init model named by the folder; a transformers Hub model is replaced by a tiny random model
  of the same family, since its config cannot be fetched offline. Every substitution is logged.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from transformers.utils import logging

from hfkd.models.loading import MODEL_ALIASES
from hfkd.models.smp import REFERENCE_NETWORKS
from hfkd.models.torchvision_detection import DETECTION_NETWORKS
from hfkd.tasks.base import DETECTION, SEGMENTATION
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


# dataset -> (image size, number of classes)
SMOKE_DATASETS: dict[str, tuple[int, int]] = {
    "uoft-cs/cifar100": (32, 100),
    "cifar100": (32, 100),
    "uoft-cs/cifar10": (32, 10),
    "cifar10": (32, 10),
    "ILSVRC/imagenet-1k": (224, 1000),
    "imagenet-1k": (224, 1000),
    "fashion-mnist": (28, 10),
    "zalando-datasets/fashion_mnist": (28, 10),
    "digits": (8, 10),
    # segmentation (smoke images are this size; the recipe's crop is replaced by it)
    "data/cityscapes": (64, 19),
    "scene_parse_150": (64, 150),
    "fashion-mnist-scenes": (64, 11),
    # object detection (square images of this size; the recipe's scales are replaced by it)
    "data/coco": (64, 80),
    "cppe-5": (64, 5),
    "fashion-mnist-detection-scenes": (64, 10),
}


SMOKE_FLAGS = [
    "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
    "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
    "--logging_steps", "1", "--evaluate_teacher", "false", "--gradient_accumulation_steps", "1",
]  # fmt: skip


def smoke_argv(argv: list[str], use_cpu: bool | None = None) -> list[str]:
    """Command-line overrides for a smoke run: they come last, so they win over the recipe and earlier flags.

    Without a GPU (`use_cpu` defaults to that), the run is moved to the CPU in float32.
    """
    extra = list(SMOKE_FLAGS)
    if use_cpu if use_cpu is not None else not torch.cuda.is_available():
        extra += ["--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
    return [*argv, *extra]


def apply_smoke(model_args: Any, data_args: Any, run_args: Any, training_args: Any) -> None:
    """Swap a run's models for random-init stand-ins of the smoke data's class count (see `smoke_model_name`),
    and fit the loss kwargs (and repeated copies' placement) to the 8 synthetic images. The data themselves come
    from `synthetic_dataset`."""
    known_size, known_labels = SMOKE_DATASETS.get(data_args.dataset, (None, None))
    image_size = run_args.smoke_image_size or known_size or 32
    num_labels = run_args.smoke_num_labels or known_labels or 10
    task = training_args.distill_task
    model_args.student_model_name_or_path, model_args.student_pretrained = smoke_model_name(
        model_args.student_model_name_or_path, num_labels, image_size, task
    )
    if training_args.teacher_model_name_or_path is not None:
        training_args.teacher_model_name_or_path, model_args.teacher_pretrained = smoke_model_name(
            training_args.teacher_model_name_or_path, num_labels, image_size, task
        )
    if task == SEGMENTATION:  # the recipe's crop (512 x 1024) at the smoke images' size
        data_args.crop_size, data_args.id2label = [image_size, image_size], None
    if task == DETECTION:  # the recipe's scales (800 x 1333) as squares of the smoke images' size
        data_args.image_size, data_args.id2label = image_size, None
    args = training_args
    args.distill_loss_kwargs = smoke_loss_kwargs(args.distill_loss, args.distill_loss_kwargs)
    # RASampler's epoch counts whole blocks of 256 images, which 8 have not: the copies are shuffled together instead.
    args.distill_view_placement = "concat"


def synthetic_dataset(
    dataset: str, label_column: str | None, *, image_size: int | None = None, num_labels: int | None = None
) -> DatasetDict:
    """8 training and 4 evaluation random RGB images of the dataset's size, labels cycling over its classes."""
    known = SMOKE_DATASETS.get(dataset)
    size = image_size or (known[0] if known else None)
    classes = num_labels or (known[1] if known else None)
    if size is None or classes is None:
        raise UsageError(
            f"Smoke mode does not know the image size and class count of {dataset!r} (it knows "
            f"{', '.join(sorted(SMOKE_DATASETS))}). Pass --smoke_image_size and --smoke_num_labels."
        )
    rng = np.random.default_rng(0)
    column = label_column or "label"
    features = Features({"image": Image(), column: ClassLabel(names=[f"class_{i}" for i in range(classes)])})
    splits = {}
    for split, count in (("train", 8), ("eval", 4)):
        images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
        labels = [int(i) % classes for i in rng.integers(0, classes, count)]
        splits[split] = Dataset.from_dict({"image": images, column: labels}, features=features)
    result = DatasetDict(splits)
    result.source = f"synthetic smoke data ({count} eval images of {size}x{size}, {classes} classes)"
    return result


def synthetic_segmentation_dataset(dataset: str, *, image_size: int | None = None, num_labels: int | None = None):
    """8 training and 4 evaluation random RGB images of the dataset's size with masks of random rectangles over its
    classes (and some ignored pixels), the class names `class_<i>`."""
    known = SMOKE_DATASETS.get(dataset)
    size, classes = image_size or (known[0] if known else 64), num_labels or (known[1] if known else 10)
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 8), ("eval", 4)):
        images, masks = [], []
        for _ in range(count):
            mask = np.full((size, size), rng.integers(classes), dtype=np.uint8)
            for _ in range(3):
                top, left = rng.integers(0, size // 2, 2)
                mask[top : top + size // 3, left : left + size // 3] = rng.integers(classes)
            mask[:2] = 255
            images.append(PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
            masks.append(PILImage.fromarray(mask))
        splits[split] = Dataset.from_dict({"image": images, "label": masks}, features=Features(
            {"image": Image(), "label": Image()}))  # fmt: skip
    result = DatasetDict(splits)
    result.source = f"synthetic smoke data ({count} eval images of {size}x{size}, {classes} classes)"
    result.label_lookup, result.id2label = None, {i: f"class_{i}" for i in range(classes)}
    return result


def synthetic_detection_dataset(dataset: str, *, image_size: int | None = None, num_labels: int | None = None):
    """8 training and 4 evaluation random RGB images of the dataset's size, each with 1 to 3 random boxes of its
    classes (`class_<i>`), in the layout of `run_object_detection.py`."""
    from hfkd.tasks.detection.data import detection_features

    known = SMOKE_DATASETS.get(dataset)
    size, classes = image_size or (known[0] if known else 64), num_labels or (known[1] if known else 10)
    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(classes)]
    splits = {}
    for split, count in (("train", 8), ("eval", 4)):
        rows = []
        for index in range(count):
            boxes = []
            for _ in range(int(rng.integers(1, 4))):
                w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                boxes.append([float(x), float(y), float(w), float(h)])
            objects = {"id": list(range(len(boxes))), "area": [b[2] * b[3] for b in boxes], "bbox": boxes,
                       "category": [int(c) for c in rng.integers(0, classes, len(boxes))]}  # fmt: skip
            image = PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            rows.append({"image_id": index, "image": image, "width": size, "height": size, "objects": objects})
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        splits[split] = Dataset.from_dict(columns, features=detection_features(names))
    result = DatasetDict(splits)
    result.source = f"synthetic smoke data ({count} eval images of {size}x{size}, {classes} classes)"
    result.id2label = dict(enumerate(names))
    return result


def _tiny_detr(num_labels: int) -> Any:
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1] * 4, out_features=["stage4"])
    config = DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, num_queries=10, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
        decoder_attention_heads=2, num_labels=num_labels,
    )  # fmt: skip
    return DetrForObjectDetection(config)


def _tiny_segformer(num_labels: int) -> Any:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64], num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32, num_labels=num_labels,
    )  # fmt: skip
    return SegformerForSemanticSegmentation(config)


def _tiny_transformers_model(model_type: str, num_labels: int, image_size: int) -> Any:
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    if model_type == "swin":
        config = SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=7,
            num_labels=num_labels,
        )
        return SwinForImageClassification(config)
    if model_type == "deit-distilled":  # a class and a distillation head (DeiT's distilled checkpoints)
        from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

        config = DeiTConfig(
            image_size=image_size, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=num_labels,
        )  # fmt: skip
        return DeiTForImageClassificationWithTeacher(config)
    if model_type in ("vit", "deit", "beit"):
        config = ViTConfig(
            image_size=image_size,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=num_labels,
        )
        return ViTForImageClassification(config)
    if model_type == "convnext":
        return ConvNextForImageClassification(
            ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)
        )
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels)
    return ResNetForImageClassification(config)


def smoke_model_name(name: str, num_labels: int, image_size: int, task: str | None = None) -> tuple[str, bool]:
    """What to load instead of `name` in smoke mode, and whether to load its weights (False: random init)."""
    if os.path.isdir(name):
        return name, True
    if task in (SEGMENTATION, DETECTION):
        return _smoke_dense(name, num_labels, image_size, task)
    target = MODEL_ALIASES.get(name.lower(), name)
    if target.startswith("timm/"):
        arch = target[len("timm/") :].split(".")[0]
        logger.warning(f"Smoke mode: {name!r} -> timm {arch!r} with random weights.")
        return arch, False
    if "/" not in target:  # a timm name or a CIFAR zoo alias
        return target, False
    base = os.path.basename(os.path.normpath(name)).lower()
    # A run folder a recipe expects (runs/cifar100/teachers/vgg13) is named after its CIFAR zoo model.
    zoo = MODEL_ALIASES.get(base) if "/" not in MODEL_ALIASES.get(base, "/") else None
    zoo = zoo or (f"cifar_{base}" if timm.is_model(f"cifar_{base}") else None)
    if not os.path.exists(name) and zoo is not None:
        logger.warning(f"Smoke mode: the folder {name!r} does not exist; using a random-init {zoo!r}.")
        return zoo, False
    family = next((f for f in ("swin", "deit", "beit", "vit", "convnext") if f in target.lower()), "resnet")
    family = "deit-distilled" if family == "deit" and "distilled" in target.lower() else family
    folder = tempfile.mkdtemp(prefix="hfkd-smoke-")
    _tiny_transformers_model(family, num_labels, image_size).save_pretrained(folder)
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    logger.warning(f"Smoke mode: {name!r} -> a tiny random {family} ({folder}); its config needs the Hub.")
    return folder, True


def _smoke_dense(name: str, num_labels: int, image_size: int, task: str) -> tuple[str, bool]:
    """A reference network of the task (smp's segmenters, torchvision's detectors) as it is, with random weights; a
    run folder named after one (runs/.../deeplabv3_resnet101) that does not exist yet: that network; a transformers
    Hub model: a tiny random SegFormer or DETR with its image processor."""
    from transformers import DetrImageProcessor, SegformerImageProcessor

    # smp's names use hyphens (deeplabv3-resnet101), torchvision's underscores (fasterrcnn_resnet50_fpn).
    segmentation = task == SEGMENTATION
    networks, other, separator = (REFERENCE_NETWORKS, "_", "-") if segmentation else (DETECTION_NETWORKS, "-", "_")
    base = os.path.basename(os.path.normpath(name)).lower().replace(other, separator)
    if name.lower() in networks or base in networks:
        network = name.lower() if name.lower() in networks else base
        logger.warning(f"Smoke mode: {name!r} -> {network!r} with random weights.")
        return network, False
    folder = tempfile.mkdtemp(prefix="hfkd-smoke-")
    model = _tiny_segformer(num_labels) if segmentation else _tiny_detr(num_labels)
    processor = SegformerImageProcessor if segmentation else DetrImageProcessor
    model.save_pretrained(folder)
    processor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    kind = type(model).__name__
    logger.warning(f"Smoke mode: {name!r} -> a tiny random {kind} ({folder}); its config needs the Hub.")
    return folder, True


def smoke_loss_kwargs(loss: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Loss kwargs that fit the 8 smoke images: CRD's negatives per sample must be fewer than the samples."""
    if loss == "crd":
        logger.warning("Smoke mode: crd with nce_k=4 (8 synthetic images).")
        return {**kwargs, "nce_k": 4}
    return kwargs
