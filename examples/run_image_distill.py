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

The run reads top to bottom: parse -> resolve the models (offline, no weights) -> data -> load the models ->
transforms -> trainer -> train -> evaluate -> model card (or push).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import datasets
import transformers
from transformers import set_seed

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.cli import DataArguments, ModelArguments, RunArguments, parse_args
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
from hfkd.demo_data import card_dataset_name
from hfkd.label_space import check_teacher_labels, map_teacher_labels
from hfkd.local_names import neutral_name, neutral_text
from hfkd.losses import get_loss_class
from hfkd.models import ModelSpec, load_image_classifier, load_image_processor, resolve_model_name
from hfkd.run_folder import prepare_output_dir, run_settings, start_run
from hfkd.smoke import apply_smoke, synthetic_dataset
from hfkd.teacher import CachedTeacher
from hfkd.teacher_cache import ReplayTransform, cache_summary, check_cache_matches

logger = logging.getLogger("hfkd.run_image_distill")

@dataclass
class RunData:
    """The loaded data of a run: splits (still raw images), columns, class names and where it came from."""

    splits: datasets.DatasetDict
    image_column: str
    label_column: str
    names: list[str]
    source: str

    def info(self, data_args: DataArguments) -> dict[str, Any]:
        """What `distill_config.json` records about the data."""
        return {
            "dataset": neutral_name(card_dataset_name(data_args.dataset, self.source)),
            "config": data_args.dataset_config,
            "source": neutral_text(self.source, data_args.dataset),
            "train_images": len(self.splits["train"]),
            "eval_images": len(self.splits["eval"]),
            "labelled_images": data_args.labelled_samples,
            "image_column": self.image_column,
            "label_column": self.label_column,
        }


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


def load_json(path: str | None, what: str) -> Any:
    if path is None:
        return None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    try:
        return json.loads(path)
    except json.JSONDecodeError:
        raise ValueError(f"{what} must be a JSON file or a JSON string, got {path!r}.") from None


def resolve_models(model_args: ModelArguments, args: DistillationArguments) -> tuple[ModelSpec, ModelSpec | None]:
    """The student's and the live teacher's specs, offline and without weights (no teacher: CE, or a cache)."""
    args.check_teacher_given()
    student = resolve_model_name(model_args.student_model_name_or_path, revision=model_args.student_revision)
    teacher = None
    if args.uses_teacher and args.teacher_cache_dir is None:
        teacher = resolve_model_name(args.teacher_model_name_or_path, revision=args.teacher_model_revision)
    for role, spec in (("student", student), ("teacher", teacher)):
        if spec is not None:
            logger.info(f"{role}: {spec.name!r} -> {spec.source} ({spec.kind})")
    return student, teacher


def load_data(
    data_args: DataArguments,
    run_args: RunArguments,
    args: DistillationArguments,
    *,
    distilling: bool,
    cache_dir: str | None = None,
    rows: dict[str, Any] | None = None,
) -> RunData:
    """The train and eval splits with their columns and class names (synthetic data in smoke mode); `rows`, a
    teacher cache's selection, replaces the seeded one."""
    if run_args.smoke:
        dataset = synthetic_dataset(
            data_args.dataset,
            data_args.label_column,
            image_size=run_args.smoke_image_size,
            num_labels=run_args.smoke_num_labels,
        )
    else:
        dataset = load_image_dataset(
            data_args.dataset,
            config_name=data_args.dataset_config,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            seed=args.seed,
            cache_dir=cache_dir,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            rows=rows,
        )
    image_column, label_column = detect_columns(dataset["train"], data_args.image_column, data_args.label_column)
    names = class_names(dataset["train"], label_column)
    check_labels(dataset, label_column, len(names))
    source = getattr(dataset, "source", data_args.dataset)
    logger.info(
        f"Data: {source}; {len(names)} classes; {len(dataset['train'])} train / {len(dataset['eval'])} eval images"
    )
    if data_args.labelled_samples is not None:
        dataset["train"] = keep_labelled_subset(
            dataset["train"], label_column, data_args.labelled_samples, seed=args.seed, drop_unlabelled=not distilling
        )
        rest = "; the teacher supervises the rest" if distilling else "; the rest are dropped (no teacher)"
        logger.info(f"Labels kept for {data_args.labelled_samples} of the training images{rest}")
    return RunData(dataset, image_column, label_column, names, source)


def load_models(
    student_spec: ModelSpec,
    teacher_spec: ModelSpec | None,
    model_args: ModelArguments,
    args: DistillationArguments,
    names: list[str],
) -> tuple[Any, Any, Any, Any]:
    """(student, its processor, teacher, its processor): the student gets the dataset's head; the teacher keeps its
    own (mapped onto the dataset's classes with --teacher_label_map) and must predict the dataset's label space."""
    id2label = dict(enumerate(names))
    common = {"trust_remote_code": model_args.trust_remote_code, "cache_dir": model_args.cache_dir}
    student = load_image_classifier(
        student_spec, num_labels=len(names), id2label=id2label, pretrained=model_args.student_pretrained, **common
    )
    student_processor = load_image_processor(student_spec, trust_remote_code=model_args.trust_remote_code)
    if teacher_spec is None:
        return student, student_processor, None, None
    # A random-init teacher gets the dataset's head; a real teacher's head is never touched.
    head = {} if model_args.teacher_pretrained else {"num_labels": len(names), "id2label": id2label}
    # --teacher_model_init_kwargs wins over the shared flags (its trust_remote_code included).
    teacher_kwargs = {**common, **args.teacher_model_init_kwargs}
    teacher = load_image_classifier(teacher_spec, pretrained=model_args.teacher_pretrained, **head, **teacher_kwargs)
    label_map = load_json(model_args.teacher_label_map, "--teacher_label_map")
    if label_map is not None:
        teacher = map_teacher_labels(teacher, label_map, names)
    check_teacher_labels(teacher, len(names), id2label)
    teacher_processor = load_image_processor(teacher_spec, trust_remote_code=teacher_kwargs["trust_remote_code"])
    return student, student_processor, teacher, teacher_processor


def prepare_splits(
    data: RunData,
    data_args: DataArguments,
    args: DistillationArguments,
    models: tuple[Any, Any, Any, Any],
    cache: CachedTeacher | None,
) -> dict[str, Any]:
    """Both splits with their batch transforms (and, for a teacher cache, the replayed cached views). Each sample's
    random augmentation comes from (seed, epoch, its index), so that resumed runs and any number of workers agree."""
    student, student_processor, teacher, teacher_processor = models
    student_config = image_config_for_model(student, student_processor)
    teacher_config = image_config_for_model(teacher, teacher_processor) if teacher is not None else None
    augment = data_args.train_augment
    # Losses such as MLKD learn from a second, strongly augmented (RandAugment) view of each training image.
    strong_view = teacher is not None and get_loss_class(args.distill_loss).needs.strong_view

    def transforms(train: bool, strong: bool = False) -> tuple[Any, Any]:
        build = lambda config: build_transforms(config, train=train, train_augment=augment, strong=strong)  # noqa: E731
        return build(student_config), build(teacher_config) if teacher_config else None

    splits = {}
    for split, train in (("train", True), ("eval", False)):
        part = data.splits[split]
        if data_args.skip_unreadable:
            part, skipped = filter_unreadable(part, data.image_column)
            logger.info(f"{split}: skipped {skipped} unreadable images")
        part = add_sample_index(part)
        transform = make_transform_fn(
            *transforms(train),
            data.image_column,
            data.label_column,
            strong_transforms=transforms(train, strong=True) if train and strong_view else None,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )
        if train and cache is not None:
            # Offline distillation: the student sees exactly the crops the teacher saw when the cache was built.
            transform = ReplayTransform(
                cache.cache,
                student_config.size,
                student_config.mean,
                student_config.std,
                data.image_column,
                data.label_column,
                student_config.num_channels,
            )
        splits[split] = set_image_transform(part, transform)
    return splits


def cache_rows(cache: CachedTeacher | None) -> dict[str, Any] | None:
    """A teacher cache's selection of the training rows, as `load_image_dataset(rows=...)` takes it."""
    selection = cache.cache.selection() if cache is not None else None
    if selection is None:
        return None
    data = cache.cache.config.data
    return {
        "train_split": data["train_split"],
        "train": selection["train_rows"],
        "eval_split": data["eval_split"],
        "eval": selection["eval_rows"],
    }


def check_cache(cache: CachedTeacher, data: RunData, data_args: DataArguments, args: DistillationArguments) -> None:
    """The cache must have been built from this run's data (and from its --teacher, when one is named)."""
    check_cache_matches(
        cache.cache.config,
        dataset=data_args.dataset,
        dataset_config=data_args.dataset_config,
        train_split=data_args.train_split,
        max_train_samples=data_args.max_train_samples,
        train=data.splits["train"],
        image_column=data.image_column,
        label_column=data.label_column,
        teacher=args.teacher_model_name_or_path,
        teacher_revision=args.teacher_model_revision,
    )
    logger.info(f"Teacher cache: {cache_summary(cache.cache.config)}; it matches this run's data.")


def train(trainer: DistillationTrainer, args: DistillationArguments) -> None:
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()


def evaluate(trainer: DistillationTrainer, run_args: RunArguments) -> tuple[dict[str, float], dict | None]:
    """The student's metrics and, when asked and possible, the teacher's."""
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    teacher_metrics = None
    if trainer.teacher_model is not None and run_args.evaluate_teacher:
        teacher_metrics = trainer.evaluate_teacher()
        trainer.log_metrics("teacher_eval", teacher_metrics)
        trainer.save_metrics("teacher_eval", teacher_metrics)
    return metrics, teacher_metrics


def write_card(
    trainer: DistillationTrainer,
    student_spec: ModelSpec,
    model_args: ModelArguments,
    data: RunData,
    data_args: DataArguments,
    results: dict[str, dict | None],
) -> None:
    """The model card next to the student (pushed with it under --push_to_hub)."""
    card_kwargs = {
        "finetuned_from": student_spec.source if student_spec.kind != "local" else student_spec.name,
        "student_from_scratch": not model_args.student_pretrained,
        "tasks": "image-classification",
        "dataset": card_dataset_name(data_args.dataset, data.source),
        "dataset_args": data_args.dataset_config,
        "tags": ["hfkd", f"distill-{trainer.args.distill_loss}"],
        "is_timm": student_spec.is_timm,
        **results,
    }
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, run_args, training_args, recipe = parse_args(argv)
    setup_logging(training_args)
    if run_args.smoke:
        apply_smoke(model_args, data_args, run_args, training_args)

    # Everything that can be checked without weights or data is checked first.
    settings = run_settings(model_args, data_args, training_args)
    training_args.resume_from_checkpoint = prepare_output_dir(
        training_args.output_dir,
        settings,
        overwrite=run_args.overwrite_output_dir,
        resume=training_args.resume_from_checkpoint,
    )
    student_spec, teacher_spec = resolve_models(model_args, training_args)
    baseline_metrics = load_json(run_args.baseline_metrics, "--baseline_metrics")
    cache = None
    if training_args.uses_teacher and training_args.teacher_cache_dir is not None:
        cache = CachedTeacher(training_args.teacher_cache_dir, training_args.device)
    set_seed(training_args.seed)

    data = load_data(
        data_args,
        run_args,
        training_args,
        distilling=teacher_spec is not None or cache is not None,
        cache_dir=model_args.cache_dir,
        rows=cache_rows(cache),
    )
    if cache is not None:
        check_cache(cache, data, data_args, training_args)
    models = load_models(student_spec, teacher_spec, model_args, training_args, data.names)
    splits = prepare_splits(data, data_args, training_args, models, cache)
    student, student_processor, teacher, _ = models
    if training_args.should_save:
        start_run(training_args.output_dir, settings, overwrite=run_args.overwrite_output_dir)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=cache if cache is not None else teacher,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"],
        data_collator=DistillationCollator(),
        processing_class=student_processor,
        recipe=recipe,
        data_info=data.info(data_args),
    )

    train(trainer, training_args)
    metrics, teacher_metrics = evaluate(trainer, run_args)
    results = {"student_metrics": metrics, "teacher_metrics": teacher_metrics, "baseline_metrics": baseline_metrics}
    write_card(trainer, student_spec, model_args, data, data_args, results)
    if not training_args.uses_teacher:
        logger.info(f"Cross-entropy run finished: top-1 {100 * metrics['eval_accuracy']:.2f} %")
    return metrics


if __name__ == "__main__":
    main()
