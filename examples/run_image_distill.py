#!/usr/bin/env python
"""Distil an image classifier into a smaller one with hfkd.

    accelerate launch examples/run_image_distill.py --teacher microsoft/swin-large --student resnet-50 --loss dist \
        --dataset imagenet-1k --output_dir runs/swinl-r50-dist --bf16 --push_to_hub

    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/run_image_distill.py \
        --config recipes/<dataset>/<method>/<student>_from_<teacher>.yaml --output_dir <dir>

`--teacher` and `--student` take a transformers Hub id, a timm Hub id (`timm/...`), a local folder, a timm
architecture name or a short alias (`resnet-50`, `swin-large`, ...). `--dataset` takes a Hub dataset id, a local
folder in imagefolder layout, or the embedded demo data (`fashion-mnist`, `digits`). `--loss ce` (or no teacher)
trains with cross-entropy only: fine-tune a teacher on your labels, or get the CE baseline. Every
`TrainingArguments` flag works; `--config recipe.yaml` sets defaults that flags override.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
import transformers
from transformers import set_seed

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.arguments import CE_ONLY
from hfkd.data import (
    DistillationCollator,
    add_sample_index,
    build_transforms,
    check_labels,
    class_names,
    detect_columns,
    filter_unreadable,
    image_config_for_model,
    keep_labelled_subset,
    load_image_dataset,
    make_transform_fn,
    set_image_transform,
)
from hfkd.demo_data import DEMO_DATASETS, FASHION_MNIST_HUB_ID
from hfkd.losses import get_loss_class
from hfkd.models import (
    ModelSpec,
    check_teacher_labels,
    load_image_classifier,
    load_image_processor,
    resolve_model_name,
)
from hfkd.parser import HfkdParser
from hfkd.smoke import SMOKE_DATASETS, smoke_argv, smoke_loss_kwargs, smoke_model_name, synthetic_dataset
from hfkd.teacher import map_teacher_labels
from hfkd.teacher_cache import CacheEpochCallback, ReplayTransform, TeacherCache

logger = logging.getLogger("hfkd.run_image_distill")

# Files that mark a finished run in an output folder.
FINISHED_RUN_FILES = ("all_results.json", "model.safetensors", "distill_config.json")


@dataclass
class ModelArguments:
    """Which models to distil."""

    student_model_name_or_path: str = field(
        metadata={
            "help": "Student: Hub id, timm/... id, local folder, timm name or alias (resnet-18, ...).",
            "aliases": ["--student"],
        },
    )
    student_revision: str = field(default="main", metadata={"help": "Revision of the student checkpoint."})
    student_pretrained: bool = field(
        default=True, metadata={"help": "Start the student from its checkpoint's weights (False: random init)."}
    )
    teacher_label_map: str | None = field(
        default=None,
        metadata={
            "help": "JSON mapping of dataset class names to teacher class names (or indices), for a teacher "
            "trained on a superset of the dataset's classes."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub (off by default)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for models and datasets."})


@dataclass
class DataArguments:
    """Which data to train and evaluate on."""

    dataset: str = field(
        default="fashion-mnist",
        metadata={"help": "Hub dataset id, local imagefolder path, or embedded demo data (fashion-mnist, digits)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split (default: validation, val or test, else a held-out part)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when unambiguous)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when unambiguous)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of the eval set."})
    train_augment: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: rrc (random resized crop + flip), crop_flip (pad-4 crop + flip, "
            "CIFAR), none, or auto (rrc, crop_flip for images of 64 px or less)."
        },
    )
    labelled_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep the labels of only this many (seeded) training images; the teacher's targets cover "
            "the rest. CE-only runs train on the labelled images alone."
        },
    )
    skip_unreadable: bool = field(
        default=False, metadata={"help": "Drop images that fail to decode (counted in the log) instead of failing."}
    )
    smoke: bool = field(
        default=False,
        metadata={
            "help": "Smoke test: 2 steps on synthetic data of the dataset's shape and class count, with random-"
            "init models, offline (checks a recipe's whole path without its data or weights)."
        },
    )
    smoke_image_size: int | None = field(default=None, metadata={"help": "Image size of the smoke data."})
    smoke_num_labels: int | None = field(default=None, metadata={"help": "Class count of the smoke data."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output folder that already holds a finished run."}
    )
    evaluate_teacher: bool = field(
        default=True, metadata={"help": "Also evaluate the teacher, for the results table of the model card."}
    )
    baseline_metrics: str | None = field(
        default=None,
        metadata={"help": "eval_results.json of a CE-only student run, shown in the model card next to this run."},
    )


def check_output_dir(args: DistillationArguments, data_args: DataArguments) -> None:
    """Refuse to write over a finished run unless asked to overwrite or resume; touch nothing."""
    folder = args.output_dir
    if not folder or not os.path.isdir(folder) or data_args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    found = [name for name in FINISHED_RUN_FILES if os.path.exists(os.path.join(folder, name))]
    if found:
        raise ValueError(
            f"Output folder {folder!r} already holds a finished run ({', '.join(found)}). Pass another "
            "`--output_dir`, `--overwrite_output_dir` to write over it, or `--resume_from_checkpoint` to continue."
        )


def card_dataset_name(dataset: str, source: str | None) -> str | None:
    """The dataset as the model card names it: the embedded Fashion-MNIST is the Hub's copy; digits (also when
    Fashion-MNIST fell back to them) has none."""
    canonical = DEMO_DATASETS.get(dataset.lower())
    if canonical is not None and "digits" in (source or ""):
        return None
    if canonical == "fashion-mnist":
        return FASHION_MNIST_HUB_ID
    return None if canonical == "digits" else dataset


def _load_json(path: str | None, what: str) -> Any:
    if path is None:
        return None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    try:
        return json.loads(path)
    except json.JSONDecodeError:
        raise ValueError(f"{what} must be a JSON file or a JSON string, got {path!r}.") from None


def setup_logging(args: DistillationArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if args.should_log else logging.WARNING
    for name in ("hfkd", logger.name):
        logging.getLogger(name).setLevel(level)
    datasets.utils.logging.set_verbosity(level if args.should_log else logging.ERROR)
    transformers.utils.logging.set_verbosity(logging.WARNING if args.should_log else logging.ERROR)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = smoke_argv(argv, use_cpu=not torch.cuda.is_available())
    parser = HfkdParser((ModelArguments, DataArguments, DistillationArguments))
    model_args, data_args, training_args, recipe = parser.parse(argv)
    setup_logging(training_args)
    student_pretrained = model_args.student_pretrained
    teacher_pretrained = True
    if data_args.smoke:
        image_size, num_labels = SMOKE_DATASETS.get(data_args.dataset, (None, None))
        image_size = data_args.smoke_image_size or image_size or 32
        num_labels = data_args.smoke_num_labels or num_labels or 10
        model_args.student_model_name_or_path, student_pretrained = smoke_model_name(
            model_args.student_model_name_or_path, num_labels, image_size
        )
        if training_args.teacher_model_name_or_path is not None:
            training_args.teacher_model_name_or_path, teacher_pretrained = smoke_model_name(
                training_args.teacher_model_name_or_path, num_labels, image_size
            )
        training_args.distill_loss_kwargs = smoke_loss_kwargs(
            training_args.distill_loss, training_args.distill_loss_kwargs
        )

    # Everything that can be checked without weights or data is checked first.
    check_output_dir(training_args, data_args)
    student_spec = resolve_model_name(model_args.student_model_name_or_path, revision=model_args.student_revision)
    teacher_name = training_args.teacher_model_name_or_path
    cache_dir = training_args.teacher_cache_dir
    distilling = training_args.uses_teacher and teacher_name is not None and cache_dir is None
    if training_args.uses_teacher and teacher_name is None and cache_dir is None:
        raise ValueError(
            f"--loss {training_args.distill_loss} needs a teacher: pass `--teacher <model>`, or `--loss ce` to "
            "train on the labels alone."
        )
    teacher_spec: ModelSpec | None = None
    if distilling:
        teacher_spec = resolve_model_name(teacher_name, revision=training_args.teacher_model_revision)
    label_map = _load_json(model_args.teacher_label_map, "--teacher_label_map")
    baseline_metrics = _load_json(data_args.baseline_metrics, "--baseline_metrics")
    for role, spec in (("student", student_spec), ("teacher", teacher_spec)):
        if spec is not None:
            logger.info(f"{role}: {spec.name!r} -> {spec.source} ({spec.kind})")
    set_seed(training_args.seed)

    load = load_image_dataset
    if data_args.smoke:
        load = lambda *a, **kw: synthetic_dataset(  # noqa: E731
            data_args.dataset, data_args.label_column, image_size=data_args.smoke_image_size,
            num_labels=data_args.smoke_num_labels,
        )  # fmt: skip
    dataset = load(
        data_args.dataset,
        config_name=data_args.dataset_config,
        train_split=data_args.train_split,
        eval_split=data_args.eval_split,
        seed=training_args.seed,
        cache_dir=model_args.cache_dir,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )
    image_column, label_column = detect_columns(dataset["train"], data_args.image_column, data_args.label_column)
    names = class_names(dataset["train"], label_column)
    id2label = dict(enumerate(names))
    check_labels(dataset, label_column, len(names))
    logger.info(
        f"Data: {getattr(dataset, 'source', data_args.dataset)}; {len(names)} classes; "
        f"{len(dataset['train'])} train / {len(dataset['eval'])} eval images"
    )

    if data_args.labelled_samples is not None:
        dataset["train"] = keep_labelled_subset(
            dataset["train"],
            label_column,
            data_args.labelled_samples,
            seed=training_args.seed,
            drop_unlabelled=not distilling,
        )
        logger.info(
            f"Labels kept for {data_args.labelled_samples} of the training images"
            + ("; the teacher supervises the rest" if distilling else "; the rest are dropped (no teacher)")
        )

    student = load_image_classifier(
        student_spec,
        num_labels=len(names),
        id2label=id2label,
        role="student",
        pretrained=student_pretrained,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=model_args.cache_dir,
    )
    student_processor = load_image_processor(student_spec, trust_remote_code=model_args.trust_remote_code)
    teacher = teacher_processor = None
    if teacher_spec is not None:
        # A random-init (smoke) teacher gets the dataset's head; a real teacher's head is never touched.
        random_head = {} if teacher_pretrained else {"num_labels": len(names), "id2label": id2label}
        teacher = load_image_classifier(
            teacher_spec,
            role="teacher" if teacher_pretrained else "student",
            pretrained=teacher_pretrained,
            **random_head,
            trust_remote_code=model_args.trust_remote_code,
            cache_dir=model_args.cache_dir,
            **training_args.teacher_model_init_kwargs,
        )
        if label_map is not None:
            teacher = map_teacher_labels(teacher, label_map, names)
        check_teacher_labels(teacher, len(names), id2label)
        teacher_processor = load_image_processor(teacher_spec, trust_remote_code=model_args.trust_remote_code)

    student_config = image_config_for_model(student, student_processor)
    teacher_config = image_config_for_model(teacher, teacher_processor) if teacher is not None else None
    augment = data_args.train_augment
    # Losses such as MLKD learn from a second, strongly augmented (RandAugment) view of each training image.
    needs_strong_view = distilling and get_loss_class(training_args.distill_loss).requires_strong_view
    splits, callbacks = {}, []
    for split, train in (("train", True), ("eval", False)):
        part = dataset[split]
        if data_args.skip_unreadable:
            part, skipped = filter_unreadable(part, image_column)
            logger.info(f"{split}: skipped {skipped} unreadable images")
        part = add_sample_index(part)
        strong_transforms = None
        if train and needs_strong_view:
            strong_transforms = (
                build_transforms(student_config, train=True, train_augment=augment, strong=True),
                build_transforms(teacher_config, train=True, train_augment=augment, strong=True)
                if teacher_config
                else None,
            )
        transform = make_transform_fn(
            build_transforms(student_config, train=train, train_augment=augment),
            build_transforms(teacher_config, train=train, train_augment=augment) if teacher_config else None,
            image_column,
            label_column,
            strong_transforms=strong_transforms,
        )
        if train and cache_dir is not None:
            # Offline distillation: the student sees exactly the crops the teacher saw when the cache was built.
            cache = TeacherCache(cache_dir)
            if cache.config.num_samples != len(part):
                raise ValueError(
                    f"The teacher cache {cache_dir!r} covers {cache.config.num_samples} training images, this run has "
                    f"{len(part)}. Build the cache on the same training set (same --max_train_samples and split)."
                )
            transform = ReplayTransform(cache, student_config.size, student_config.mean, student_config.std,
                                        image_column, label_column, student_config.num_channels)  # fmt: skip
            callbacks.append(CacheEpochCallback(transform))
        splits[split] = set_image_transform(part, transform)

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"],
        data_collator=DistillationCollator(),
        processing_class=student_processor,
        callbacks=callbacks,
    )
    trainer.recipe_path = recipe
    trainer.data_info = {
        "dataset": card_dataset_name(data_args.dataset, getattr(dataset, "source", None)),
        "config": data_args.dataset_config,
        "source": getattr(dataset, "source", None),
        "train_images": len(splits["train"]),
        "eval_images": len(splits["eval"]),
        "labelled_images": data_args.labelled_samples,
        "image_column": image_column,
        "label_column": label_column,
    }

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    teacher_metrics = None
    if teacher is not None and data_args.evaluate_teacher:
        teacher_metrics = trainer.evaluate_teacher()
        trainer.log_metrics("teacher_eval", teacher_metrics)
        trainer.save_metrics("teacher_eval", teacher_metrics)

    card_kwargs = {
        "finetuned_from": student_spec.source if student_spec.kind != "local" else student_spec.name,
        "tasks": "image-classification",
        "dataset": card_dataset_name(data_args.dataset, getattr(dataset, "source", None)),
        "dataset_args": data_args.dataset_config,
        "tags": ["hfkd", f"distill-{training_args.distill_loss}"],
        "student_metrics": metrics,
        "teacher_metrics": teacher_metrics,
        "baseline_metrics": baseline_metrics,
        "is_timm": student_spec.is_timm,
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)
    if training_args.distill_loss == CE_ONLY:
        logger.info(f"Cross-entropy run finished: top-1 {100 * metrics['eval_accuracy']:.2f} %")
    return metrics


if __name__ == "__main__":
    main()
