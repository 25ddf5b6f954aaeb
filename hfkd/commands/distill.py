"""`hfkd distill`: distil an image classifier into a smaller one, from the command line.

    hfkd distill --teacher microsoft/swin-large --student resnet-50 --loss dist --dataset imagenet-1k \
        --output_dir runs/swinl-r50-dist --bf16
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml -m hfkd distill \
        --config recipes/<dataset>/<method>/<student>_from_<teacher>.yaml --output_dir <dir>

The run reads top to bottom: parse -> resolve the models (offline, no weights) -> data -> load the models ->
transforms -> trainer -> train -> evaluate -> model card (or push). Each step is a public function of this module (the
data and its preprocessing: `hfkd.commands.data.ImageClassificationData`), and `examples/run_image_distill.py` is
`main` written out from the same steps, for a user to copy and change.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import datasets
import transformers
from transformers import set_seed

from hfkd.commands.arguments import DataArguments, ModelArguments, RunArguments, parse_args
from hfkd.commands.data import ImageClassificationData, RunData
from hfkd.commands.detection import DetectionData, load_detection_models
from hfkd.commands.features import FeatureData, load_feature_models
from hfkd.commands.run_folder import prepare_output_dir, run_settings, start_run
from hfkd.commands.segmentation import SegmentationData, load_segmentation_models
from hfkd.commands.smoke import apply_smoke
from hfkd.data.demo import card_dataset_name
from hfkd.losses import get_loss_class
from hfkd.models.availability import check_available, config_num_labels, model_config
from hfkd.models.distillation_head import config_has_distillation_head, refusal
from hfkd.models.embeddings import is_backbone_class
from hfkd.models.label_space import check_label_space, check_teacher_labels, map_teacher_labels
from hfkd.models.loading import ModelSpec, load_image_classifier, load_image_processor, resolve_model_name
from hfkd.tasks.base import CLASSIFICATION, DETECTION, FEATURES, SEGMENTATION
from hfkd.tasks.registry import get_task, task_of_config
from hfkd.teachers.cached import CachedTeacher
from hfkd.training.arguments import DistillationArguments
from hfkd.training.trainer import DistillationTrainer
from hfkd.utils.errors import UsageError
from hfkd.utils.json_arguments import parse_json_mapping
from hfkd.utils.wording import with_article

logger = transformers.utils.logging.get_logger(__name__)


def setup_logging(args: DistillationArguments) -> None:
    """Log to stdout: hfkd's steps at INFO on the main process, transformers' and datasets' warnings."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = logging.INFO if args.should_log else logging.WARNING
    logging.getLogger("hfkd").setLevel(level)
    datasets.utils.logging.set_verbosity(level if args.should_log else logging.ERROR)
    transformers.utils.logging.set_verbosity(logging.WARNING if args.should_log else logging.ERROR)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def resolve_models(model_args: ModelArguments, args: DistillationArguments) -> tuple[ModelSpec, list[ModelSpec]]:
    """The student's and the live teachers' specs (one, or the members of an ensemble; none for CE or a cache),
    without weights; a Hub model that is neither cached nor reachable stops the run here, in one line."""
    args.check_teacher_given()
    student = resolve_model_name(model_args.student_model_name_or_path, revision=model_args.student_revision)
    student = check_available(student, "student", pretrained=model_args.student_pretrained)
    teachers = []
    if args.uses_teacher and args.teacher_cache_dir is None:
        for name in args.teacher_names:
            teacher = resolve_model_name(name, revision=args.teacher_model_revision)
            teachers.append(check_available(teacher, "teacher", pretrained=model_args.teacher_pretrained))
    for role, spec in [("student", student)] + [("teacher", t) for t in teachers]:
        logger.info(f"{role}: {spec.name!r} -> {spec.source} ({spec.kind})")
    check_student_heads(args, student)
    return student, teachers


def check_student_heads(args: DistillationArguments, student: ModelSpec) -> None:
    """A loss that trains a distillation head apart from the class head (`deit`) refuses a student without one,
    read from its config before any weights or data load."""
    if not (args.uses_teacher and get_loss_class(args.distill_loss).needs.distillation_head):
        return
    timm_name = None
    if student.kind in ("timm_arch", "timm_hub"):  # `timm/<architecture>.<tag>` or the architecture
        timm_name = student.source.removeprefix("timm/").split(".")[0]
    if not config_has_distillation_head(model_config(student), timm_name):
        raise refusal(args.distill_loss, repr(student.name))


def run_task(args: DistillationArguments, student: ModelSpec, teachers: list[ModelSpec]) -> str:
    """The run's task, from `--task` or the models' configs (no weights read). A teacher must do the run's task; a
    student checkpoint of another task is refused, unless it is an image classifier whose family the task's Auto
    class builds (an ImageNet `nvidia/mit-b0` initialising a SegFormer's encoder, as transformers' examples do). A
    segmentation model is never trained as a classifier."""
    configs = {spec.name: model_config(spec) for spec in [student, *teachers]}
    for name, config in configs.items():
        universal = [a for a in config.get("architectures") or [] if a.endswith("ForUniversalSegmentation")]
        if universal:
            raise UsageError(
                f"{name!r} is {with_article(universal[0])} (mask classification: Mask2Former, OneFormer, MaskFormer), "
                "which hfkd does not distil yet: pass a *ForSemanticSegmentation model (SegFormer, UperNet, DPT, "
                "BEiT, MobileViT-DeepLabV3) or a reference network (deeplabv3-resnet101, pspnet-resnet101)."
            )
    tasks = {name: task_of_config(config) for name, config in configs.items()}
    wanted = args.distill_task or label_free_task(args, [configs[spec.name] for spec in teachers])
    found = {task for task in tasks.values() if task is not None}
    if wanted is None and len(found) > 1:
        described = ", ".join(f"{name!r}: {task}" for name, task in tasks.items() if task is not None)
        raise UsageError(
            f"Student and teacher do different tasks ({described}); distil between models of one task, or pass --task "
            "to initialise the student from a checkpoint of another task."
        )
    task = wanted or next(iter(found), None) or CLASSIFICATION
    for spec in [student, *teachers]:
        other = tasks[spec.name]
        if other is None or other == task:
            continue
        # Only an image classifier's backbone may start a student of a dense task, never the reverse; label-free
        # distillation reads a classifier teacher's backbone too (its head is not loaded).
        backbone = other == CLASSIFICATION and get_task(task).builds(configs[spec.name].get("model_type"))
        if (spec is student or task == FEATURES) and backbone:
            logger.info(
                f"The {task} student starts from {spec.name!r}, {with_article(other)} checkpoint: its encoder's "
                "weights."
            )
            continue
        raise UsageError(
            f"--task {task}, but {spec.name!r} is {with_article(other)} model: pass {task} models (hfkd never trains "
            f"{with_article(other)} model for {task})."
        )
    args.distill_task = task
    args.check_task(task)
    logger.info(f"Task: {task}")
    return task


def label_free_task(args: DistillationArguments, teacher_configs: list[dict[str, Any]]) -> str | None:
    """image-feature-extraction when nothing else says the task and the loss serves only it (`--loss embed`) or a
    teacher is a backbone without a head (its config's architectures: `Dinov2Model`, `CLIPModel`, ...)."""
    loss_tasks = get_loss_class(args.distill_loss).tasks if args.uses_teacher else frozenset()
    backbone = any(
        config.get("architectures") and all(is_backbone_class(a) for a in config["architectures"])
        for config in teacher_configs
    )
    return FEATURES if loss_tasks == {FEATURES} or (backbone and args.uses_teacher) else None


def data_builder(task: str, data_args: DataArguments, run_args: RunArguments, args: DistillationArguments,
                 cache: Any, model_args: ModelArguments, teachers: list[ModelSpec]) -> Any:  # fmt: skip
    """The task's data builder (`ImageClassificationData`, `SegmentationData`, `DetectionData`)."""
    if task == FEATURES:
        return FeatureData(data_args, run_args, args, cache, cache_dir=model_args.cache_dir)
    if task in (SEGMENTATION, DETECTION):
        fallback = model_config(teachers[0]).get("id2label") if teachers else None
        fallback = {int(k): v for k, v in fallback.items()} if fallback else None
        builder = SegmentationData if task == SEGMENTATION else DetectionData
        return builder(data_args, run_args, args, cache, cache_dir=model_args.cache_dir, id2label=fallback)
    return ImageClassificationData(data_args, run_args, args, cache, cache_dir=model_args.cache_dir)


def task_models(task: str, student: ModelSpec, teachers: list[ModelSpec], model_args: ModelArguments,
                args: DistillationArguments, data: RunData, data_args: DataArguments) -> tuple:  # fmt: skip
    """The task's models: `load_models` (classifiers), `load_segmentation_models` or `load_detection_models`."""
    if task == SEGMENTATION:
        return load_segmentation_models(student, teachers, model_args, args, data.names, data_args.ignore_index)
    if task == DETECTION:
        return load_detection_models(student, teachers, model_args, args, data.names)
    if task == FEATURES:
        return load_feature_models(student, teachers, model_args, args)
    return load_models(student, teachers, model_args, args, data.names)


def run_phases(run_args: RunArguments, model_args: ModelArguments) -> tuple[bool, bool]:
    """(train, evaluate): both by default; --do_train / --do_eval, when given, as transformers' examples read them
    (an --eval_strategy alone does not make a run evaluation-only). Evaluating alone needs a trained student: the
    --student folder."""
    do_train, do_eval = (bool(asked) for asked in run_args.phases)
    if not do_train and not do_eval:
        return True, True
    if do_eval and not do_train and not model_args.student_pretrained:
        raise UsageError(
            "--do_eval without --do_train evaluates a trained student: pass its folder with --student, without "
            "--student_pretrained false."
        )
    return do_train, do_eval


def open_cache(args: DistillationArguments) -> CachedTeacher | None:
    """The teacher cache of `--teacher_cache_dir` (checked when opened), when the run distils from one."""
    if not args.uses_teacher or args.teacher_cache_dir is None:
        return None
    return CachedTeacher(args.teacher_cache_dir, args.device)


def _check_heads(
    student_spec: ModelSpec, teacher_specs: list[ModelSpec], model_args: ModelArguments, num_classes: int
) -> None:
    """Decided from the configs, before any weights load: a 1000-class teacher cannot teach 10 classes, and a
    student whose head must be kept needs the data's class count."""
    if model_args.teacher_pretrained and model_args.teacher_label_map is None:
        for spec in teacher_specs:
            check_label_space(spec.name, config_num_labels(spec), num_classes)
    if model_args.student_pretrained and not model_args.ignore_mismatched_sizes:
        student_classes = config_num_labels(student_spec)
        if student_classes is not None and student_classes != num_classes:
            raise UsageError(
                f"--student {student_spec.name!r} has {student_classes} classes and the data has {num_classes}; "
                "--ignore_mismatched_sizes false keeps its head. Drop that flag to give the student a new head."
            )


def load_models(
    student_spec: ModelSpec,
    teacher_specs: list[ModelSpec],
    model_args: ModelArguments,
    args: DistillationArguments,
    names: list[str],
) -> tuple[Any, Any, list[Any], list[Any]]:
    """(student, its processor, teachers, their processors): the student gets the dataset's head; each teacher
    keeps its own (mapped onto the dataset's classes with --teacher_label_map) and must predict the dataset's label
    space, an ensemble's teachers hence the same one."""
    _check_heads(student_spec, teacher_specs, model_args, len(names))
    id2label = dict(enumerate(names))
    common = {"trust_remote_code": model_args.trust_remote_code, "cache_dir": model_args.cache_dir}
    student = load_image_classifier(
        student_spec,
        num_labels=len(names),
        id2label=id2label,
        pretrained=model_args.student_pretrained,
        drop_path_rate=model_args.drop_path_rate,
        **common,
    )
    student_processor = load_image_processor(student_spec, trust_remote_code=model_args.trust_remote_code)
    # A random-init teacher gets the dataset's head; a real teacher's head is never touched.
    head = {} if model_args.teacher_pretrained else {"num_labels": len(names), "id2label": id2label}
    # --teacher_model_init_kwargs wins over the shared flags (its trust_remote_code included).
    teacher_kwargs = {**common, **args.teacher_model_init_kwargs}
    label_map = parse_json_mapping("--teacher_label_map", model_args.teacher_label_map, files=True) or None
    teachers, processors = [], []
    for spec in teacher_specs:
        teacher = load_image_classifier(spec, pretrained=model_args.teacher_pretrained, **head, **teacher_kwargs)
        if label_map is not None:
            teacher = map_teacher_labels(teacher, label_map, names)
        check_teacher_labels(teacher, len(names), id2label)
        teachers.append(teacher)
        processors.append(load_image_processor(spec, trust_remote_code=teacher_kwargs["trust_remote_code"]))
    return student, student_processor, teachers, processors


def build_trainer(
    args: DistillationArguments, models: tuple, splits: dict[str, Any], cache: Any, **record: Any
) -> DistillationTrainer:
    """The trainer (it builds the loss for the two models, so a loss that cannot serve them fails here); an output
    folder that the attempt created is removed again when it fails."""
    student, student_processor, teachers, _ = models
    # A timm student's preprocessing lives in its config.json; its processor's save_pretrained only warns.
    if type(student_processor).__name__ == "TimmWrapperImageProcessor":
        student_processor = None
    existed = os.path.exists(args.output_dir)
    try:
        return DistillationTrainer(
            model=student,
            teacher_model=cache if cache is not None else teachers[0] if len(teachers) == 1 else teachers or None,
            args=args,
            train_dataset=splits["train"],
            eval_dataset=splits["eval"],
            data_collator=None,  # the task's: DistillationCollator, SegmentationCollator
            processing_class=student_processor,
            **record,
        )
    except Exception:
        if not existed and os.path.isdir(args.output_dir) and not os.listdir(args.output_dir):
            os.rmdir(args.output_dir)
        raise


def train(trainer: DistillationTrainer, args: DistillationArguments) -> None:
    """Train (resuming when asked), then save the student, its metrics and the trainer's state."""
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
        teacher_metrics = trainer.evaluate_teacher() or None  # none without labels (a label-free run's loss only)
    if teacher_metrics:
        trainer.log_metrics("teacher_eval", teacher_metrics)
        trainer.save_metrics("teacher_eval", teacher_metrics)
    if not trainer.args.uses_teacher:
        key = f"eval_{trainer.task.metric}"
        logger.info(f"Cross-entropy run finished: {key} {100 * metrics[key]:.2f} %")
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
        "tasks": trainer.task.pipeline_tag,
        # Image folders (--train_dir) are the data, not the --dataset default.
        "dataset": None if data_args.train_dir else card_dataset_name(data_args.dataset, data.source),
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
    """`hfkd distill [flags]`: the run, step by step; returns the student's evaluation metrics."""
    model_args, data_args, run_args, training_args, recipe = parse_args(argv, prog="hfkd distill")
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
    student_spec, teacher_specs = resolve_models(model_args, training_args)
    do_train, do_eval = run_phases(run_args, model_args)
    baseline = parse_json_mapping("--baseline_metrics", run_args.baseline_metrics, files=True) or None
    cache = open_cache(training_args)
    set_seed(training_args.seed)

    # The data and its preprocessing, one builder: its splits are read before the models load (the student's head
    # takes the class names) and get their transforms after (each model's own preprocessing).
    task = run_task(training_args, student_spec, teacher_specs)
    builder = data_builder(task, data_args, run_args, training_args, cache, model_args, teacher_specs)
    data = builder.load()
    models = task_models(task, student_spec, teacher_specs, model_args, training_args, data, data_args)
    splits = builder.splits(data, models)
    trainer = build_trainer(training_args, models, splits, cache, recipe=recipe, data_info=data.info(data_args))
    if do_train:
        if training_args.should_save:
            start_run(training_args.output_dir, settings, overwrite=run_args.overwrite_output_dir)
        train(trainer, training_args)
    metrics, teacher_metrics = evaluate(trainer, run_args) if do_eval else ({}, None)
    if do_train:
        results = {"student_metrics": metrics, "teacher_metrics": teacher_metrics}
        write_card(trainer, student_spec, model_args, data, data_args, {**results, "baseline_metrics": baseline})
    return metrics
