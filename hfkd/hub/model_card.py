"""Model cards for distilled students: Hub metadata, results table, distillation setup, usage and citations."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers.utils import logging

from hfkd.hub import card_text as text
from hfkd.losses.base import PaperRef
from hfkd.losses.registry import CE_ONLY, get_loss_class
from hfkd.tasks.base import CLASSIFICATION, Task
from hfkd.tasks.registry import get_task
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path

logger = logging.get_logger(__name__)


_TEMPLATE = "templates/model_card.md"


# The usage snippets of a task: `templates/usage-<task name>.md`.
_USAGE_TEMPLATE = "templates/usage-{task}.md"


# Students whose model type transformers' Auto classes know only once an hfkd module registered it.
REGISTERING_MODULES = {
    "hfkd_smp": "hfkd.models.smp",
    "hfkd_torchvision_detection": "hfkd.models.torchvision_detection",
}
# Students whose usage differs from their task's snippets: `templates/usage-<task>-<variant>.md`, by model type.
USAGE_VARIANTS = {"hfkd_torchvision_detection": "torchvision"}


@dataclass
class ModelCardInfo:
    r"""
    Everything the model card of a distilled student says, in one record (`DistillationTrainer.create_model_card`
    fills it from `distill_config()` and the run's metrics).

    Args:
        model_name (`str`):
            Name of the distilled model: the card's title and the `model-index` name.
        student_name (`str`):
            The student's starting checkpoint (Hub id, `hf-hub:` timm id, timm architecture or local folder; a local
            folder is named by its folder name). It becomes `base_model` only when it is a `namespace/name` Hub id.
        loss_key (`str`):
            Registered loss key (`"kd"`, `"dkd"`, ...) or `"ce"` for a cross-entropy-only run without teacher.
        teacher_name (`str`, *optional*):
            Teacher checkpoint, shown in the summary, the results table and the distillation section.
        teacher_revision (`str`, *optional*):
            Revision of the teacher checkpoint.
        loss_kwargs (`dict`, *optional*):
            The loss's resolved hyperparameters.
        paper (`PaperRef`, *optional*):
            The loss's paper; its BibTeX goes into the citation section.
        ce_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the cross-entropy term.
        distill_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the distillation term.
        dataset_name (`str`, *optional*):
            Training dataset (Hub id, builder name such as `imagefolder`, or local path). Listed under
            `datasets` only when it is a Hub id.
        dataset_config (`str`, *optional*):
            Dataset configuration name.
        student_metrics (`dict[str, float]`, *optional*):
            Evaluation metrics of the student, e.g. `{"eval_accuracy": 0.76, "eval_top5_accuracy": 0.93}`: the keys of
            the task's `card_metrics` (`accuracy` (or `top1_accuracy`) and `top5_accuracy`; `mean_iou`,
            `mean_accuracy` and `overall_accuracy`), fractions in [0, 1], looked up with an `eval_`, `test_` or no
            prefix.
        teacher_metrics (`dict[str, float]`, *optional*):
            Same keys, for the teacher.
        baseline_metrics (`dict[str, float]`, *optional*):
            Same keys, for the same student trained with cross-entropy only.
        hyperparameters (`dict[str, Any]`, *optional*):
            Training hyperparameters to list (learning rate, epochs, batch size, ...). `None` values are skipped.
        is_timm (`bool`, *optional*, defaults to `False`):
            Whether the student is a timm model: sets `library_name: timm` and adds a timm usage snippet.
        hub_model_id (`str`, *optional*):
            Repo id the model is pushed to; used in the usage snippets (else the output folder, else `model_name`).
        license (`str`, *optional*):
            License identifier for the metadata (e.g. `"apache-2.0"`).
        extra_tags (`list[str]`, *optional*):
            More tags for the metadata.
        student_from_scratch (`bool`, *optional*, defaults to `False`):
            The student started from random weights: the card says "trained from scratch" with its architecture.
        student_architecture (`str`, *optional*):
            The student's architecture (timm name or transformers class), for a student trained from scratch.
        teacher_local (`bool`, *optional*):
            The teacher is a local checkpoint named by its folder name (`None`: judged from `teacher_name`).
        teacher_note (`str`, *optional*):
            Where the teacher's weights come from (e.g. a released reference checkpoint), shown with the teacher.
        teacher_ensemble (`dict`, *optional*):
            A teacher ensemble's record (`mode`, `weights`, `temperature`, `feature_teacher`, `members`): the card
            names every teacher with its accuracy (`teacher_eval_member_<i>_*`) and the ensemble's.
        log_history (`list[dict]`, *optional*):
            `TrainerState.log_history`: every evaluation of the run becomes a row of the training-results table.
        task (`str`, *optional*, defaults to `"image-classification"`):
            The run's task (`hfkd.tasks`): the card's metric columns (`Task.card_metrics`), `pipeline_tag`, task tag
            and usage snippets.
        student_model_type (`str`, *optional*):
            The student config's `model_type`: a type that an hfkd module registers with transformers' Auto classes
            (`hfkd_smp`) puts that import into the usage snippets.
        image_mode (`str`, *optional*, defaults to `"RGB"`):
            The PIL mode the student reads (`"L"` for a 1-channel model): the usage snippets convert images to it,
            and leave out transformers' `pipeline`, which reads every image as RGB, for other modes.
    """

    model_name: str
    student_name: str
    loss_key: str
    teacher_name: str | None = None
    teacher_revision: str | None = None
    loss_kwargs: dict[str, Any] | None = None
    paper: PaperRef | None = None
    ce_weight: float = 1.0
    distill_weight: float = 1.0
    dataset_name: str | None = None
    dataset_config: str | None = None
    student_metrics: dict[str, float] | None = None
    teacher_metrics: dict[str, float] | None = None
    baseline_metrics: dict[str, float] | None = None
    hyperparameters: dict[str, Any] | None = None
    is_timm: bool = False
    hub_model_id: str | None = None
    license: str | None = None
    extra_tags: list[str] | None = None
    student_from_scratch: bool = False
    student_architecture: str | None = None
    teacher_local: bool | None = None
    teacher_note: str | None = None
    log_history: list[dict[str, Any]] | None = None
    teacher_ensemble: dict[str, Any] | None = None
    task: str = CLASSIFICATION
    student_model_type: str | None = None
    image_mode: str = "RGB"

    @classmethod
    def for_run(
        cls,
        distill_config: dict[str, Any],
        args: Any,
        student_config: Any,
        *,
        paper: PaperRef | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        license: str | None = None,
        is_timm: bool | None = None,
        student_from_scratch: bool = False,
        log_history: list[dict[str, Any]] | None = None,
        **metrics: dict[str, float] | None,
    ) -> ModelCardInfo:
        """The card of a `DistillationTrainer` run: its `distill_config()`, arguments and student config, plus the
        `Trainer.create_model_card` arguments (`finetuned_from`, `dataset`, ...) and the `*_metrics`. Runs recorded
        before `distill_config.json` held a `task` were image classification."""
        teacher = distill_config["teacher"] or {}
        hyperparameters = {**training_hyperparameters(args), "drop_path_rate": _drop_path_rate(student_config)}
        crop = (distill_config.get("data") or {}).get("crop_size")
        if crop:
            hyperparameters["train_crop"] = text.crop_text(crop)
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        uses_teacher = distill_config["distill_loss"] != CE_ONLY
        return cls(
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            student_name=finetuned_from or getattr(student_config, "name_or_path", None) or "student",
            loss_key=distill_config["distill_loss"],
            teacher_name=teacher.get("name_or_path"),
            teacher_revision=teacher.get("revision"),
            loss_kwargs=distill_config["distill_loss_kwargs"],
            paper=paper,
            ce_weight=distill_config["distill_ce_weight"],
            distill_weight=distill_config["distill_weight"] if uses_teacher else 0.0,
            dataset_name=dataset if isinstance(dataset, str) else (dataset[0] if dataset else None),
            dataset_config=dataset_args if isinstance(dataset_args, str) else None,
            hyperparameters=hyperparameters,
            is_timm=getattr(student_config, "model_type", None) == "timm_wrapper" if is_timm is None else is_timm,
            hub_model_id=args.hub_model_id if args.push_to_hub else None,
            license=license,
            extra_tags=[t for t in extra_tags if t not in ("hfkd", "knowledge-distillation")],
            student_from_scratch=student_from_scratch,
            student_architecture=_architecture(student_config),
            teacher_local=teacher.get("local"),
            teacher_note=teacher.get("provenance"),
            log_history=log_history,
            teacher_ensemble={**teacher["ensemble"], "members": teacher["members"]} if "ensemble" in teacher else None,
            task=distill_config.get("task") or CLASSIFICATION,
            student_model_type=getattr(student_config, "model_type", None),
            image_mode="L" if _num_channels(student_config) == 1 else "RGB",
            **metrics,
        )


def _num_channels(config: Any) -> int | None:
    """The channels a student reads: its config's `num_channels`, or a timm config's `pretrained_cfg` input size."""
    channels = getattr(config, "num_channels", None)
    if channels is None:
        input_size = (getattr(config, "pretrained_cfg", None) or {}).get("input_size") or [None]
        channels = input_size[0]
    return channels if isinstance(channels, int) else None


def _architecture(config: Any) -> str | None:
    architectures = getattr(config, "architectures", None) or [None]
    return getattr(config, "architecture", None) or architectures[0] or getattr(config, "model_type", None)


def build_model_card(info: ModelCardInfo, output_dir: str | None = None) -> ModelCard:
    r"""Builds the model card of a distilled student from `info` and, when `output_dir` is given, writes it to
    `output_dir/README.md` (creating the folder).

    The run's task (`info.task`) decides the metric columns (its `card_metrics`), the `pipeline_tag` and task tags
    and the usage snippets (`templates/usage-<task>.md`). The YAML metadata carries `library_name`, the tags
    (`hfkd`, `knowledge-distillation`, `distill-<loss_key>`, the task's), `base_model` and `datasets` (Hub ids
    only, never local paths), `metrics` and a `model-index` holding the student's card metrics as **fractions in
    [0, 1]**, exactly as passed. The body (template `hfkd/hub/templates/model_card.md`) shows them as percentages.

    Returns:
        [`huggingface_hub.ModelCard`]: the rendered card.
    """
    _check_card_info(info)
    task = get_task(info.task)
    columns = task.card_metrics
    student_values = text.metric_values(info.student_metrics, columns, "student_metrics")
    teacher_values = text.metric_values(info.teacher_metrics, columns, "teacher_metrics")
    baseline_values = text.metric_values(info.baseline_metrics, columns, "baseline_metrics")
    card_data = _card_metadata(info, task, student_values)

    model_name, loss_key, teacher_name = info.model_name, info.loss_key, info.teacher_name
    student = text.student_text(info.student_name, info.student_from_scratch, info.student_architecture)
    teacher, teacher_local, members = _teacher_text(info, columns)
    dataset_text = text.dataset_link(info.dataset_name, info.dataset_config) if info.dataset_name else None
    loss_kwargs = sorted((info.loss_kwargs or {}).items())
    hyperparameters = [(k, text.value_text(v)) for k, v in (info.hyperparameters or {}).items() if v is not None]
    card = ModelCard.from_template(
        card_data,
        template_str=_read_template(_TEMPLATE),
        hfkd_title=model_name,
        hfkd_summary=text.summary(student, teacher, loss_key, info.paper, dataset_text),
        hfkd_task=text.task_text(task.name, task.pipeline_tag),
        hfkd_columns=[title for _, title in columns],
        hfkd_results=text.results_rows(student_values, teacher_values, baseline_values, teacher_name, members),
        hfkd_has_metrics=text.known(student_values + teacher_values + baseline_values),
        hfkd_training_log=text.training_log_rows(info.log_history, columns),
        hfkd_ce_only=loss_key == CE_ONLY,
        hfkd_student=student,
        hfkd_student_from_scratch=info.student_from_scratch,
        hfkd_teacher=teacher,
        hfkd_teacher_local=bool(teacher_name) and (teacher_local or members is not None),
        hfkd_teacher_revision=info.teacher_revision,
        hfkd_teacher_note=info.teacher_note,
        hfkd_loss_key=loss_key,
        hfkd_loss_kwargs=[(text.cell(str(k)), text.cell(text.value_text(v))) for k, v in loss_kwargs],
        hfkd_ce_weight=text.value_text(float(info.ce_weight)),
        **_objective(loss_key, task, dict(loss_kwargs).get("feature_loss")),
        hfkd_distill_weight=text.value_text(float(info.distill_weight)),
        hfkd_paper=info.paper,
        hfkd_hyperparameters=hyperparameters,
        hfkd_usage=_usage(info, task, output_dir),
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "README.md")
        card.save(path)
        logger.info(f"Model card written to {path}")
    return card


def _objective(loss_key: str, task: Task, feature_loss: Any) -> dict[str, Any]:
    """The objective's terms as the card writes them (`CE`, `DIST`; the loss's own `card_terms` when it weighs them
    itself) and whether the student predicts with the mean of a class and a distillation head (DeiT)."""
    try:
        loss_cls = get_loss_class(loss_key)
    except KeyError:  # cross-entropy only, or a loss of the user's not registered here
        loss_cls = None
    task_term, distill_term = (loss_cls and loss_cls.card_terms) or (
        task.task_loss_name, _loss_name(loss_key, feature_loss)
    )
    two_heads = loss_cls is not None and loss_cls.needs.distillation_head
    return {"hfkd_task_loss_name": task_term, "hfkd_loss_name": distill_term, "hfkd_two_heads": two_heads}


def _loss_name(loss_key: str, feature_loss: Any) -> str:
    """The distillation term of the objective: `DIST`, or `(DIST + MIMIC)` with a detector's feature loss."""
    return f"({loss_key.upper()} + {str(feature_loss).upper()})" if feature_loss else loss_key.upper()


def _read_template(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _usage(info: ModelCardInfo, task: Task, output_dir: str | None) -> str:
    """The "How to use" snippets of the task's usage template: the pipeline, the Auto classes (after the import that
    registers the student's model type, where one does) and, for a timm student, `timm.create_model`."""
    import jinja2  # as `ModelCard.from_template` does: needed only when a card is written

    variant = USAGE_VARIANTS.get(info.student_model_type or "")
    template = _USAGE_TEMPLATE.format(task=task.name + (f"-{variant}" if variant else ""))
    if not resources.files(__package__).joinpath(template).is_file():
        raise UsageError(f"hfkd has no usage snippets for {task.name} models: add hfkd/hub/{template}.")
    model_name = info.model_name
    repo = text.repo_reference(info.hub_model_id, output_dir, model_name)
    timm_refs = text.timm_refs(info.hub_model_id, output_dir, model_name) if info.is_timm else []
    return jinja2.Template(_read_template(template)).render(
        repo_literal=json.dumps(repo),
        repo_shell=shlex.quote(repo),
        timm_model_arg=shlex.quote(json.loads(timm_refs[0])) if timm_refs else None,
        backbone_class=_backbone_class(info.student_model_type),
        pipeline_tag=task.pipeline_tag,
        auto_class=task.auto_class,
        register_module=REGISTERING_MODULES.get(info.student_model_type or ""),
        timm_refs=timm_refs,
        two_heads=_objective(info.loss_key, task, None)["hfkd_two_heads"],
        image_mode=info.image_mode,
        image_mode_literal=json.dumps(info.image_mode),
        image_mode_name="grayscale (1-channel)" if info.image_mode == "L" else f"{info.image_mode}-mode",
    )


def _backbone_class(model_type: str | None) -> str | None:
    """transformers' backbone class of a student's model type (`ResNetBackbone`, `Dinov2Backbone`), when it has
    one; a timm model has none of its own."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

    return None if model_type in (None, "timm_wrapper") else MODEL_FOR_BACKBONE_MAPPING_NAMES.get(model_type)


def _check_card_info(info: ModelCardInfo) -> None:
    """Refuse a card whose names are missing or whose extra tags are not all non-empty strings."""
    for name in ("model_name", "student_name", "loss_key"):
        value = getattr(info, name)
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"`{name}` must be a non-empty string, got {value!r}. Pass the {name.replace('_', ' ')}.")
    if info.extra_tags is not None and not all(isinstance(tag, str) and tag for tag in info.extra_tags):
        raise UsageError(f"`extra_tags` must be a list of non-empty strings, got {info.extra_tags!r}.")


def _card_metadata(info: ModelCardInfo, task: Task, student_values: tuple[float | None, ...]) -> ModelCardData:
    """The card's YAML metadata (see `build_model_card`)."""
    hub_dataset = text.hub_dataset_id(info.dataset_name)
    task_type = (task.pipeline_tag, text.task_title(task.name))
    eval_results = text.eval_results(
        student_values, task.card_metrics, task_type, info.dataset_name, info.dataset_config
    )
    tags = ["hfkd", "knowledge-distillation", f"distill-{info.loss_key}", task.pipeline_tag, task.name]
    tags = list(dict.fromkeys(tags + (["timm"] if info.is_timm else [])))
    return ModelCardData(
        library_name="timm" if info.is_timm else "transformers",
        license=info.license,
        tags=tags + [tag for tag in info.extra_tags or [] if tag not in tags],
        base_model=None if info.student_from_scratch else text.hub_id(info.student_name, require_namespace=True),
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=text.hub_metric_types(task.card_metrics),
        pipeline_tag=task.pipeline_tag,
        model_name=info.model_name if eval_results else None,
        eval_results=eval_results,
    )


def _teacher_text(
    info: ModelCardInfo, columns: text.Columns
) -> tuple[str | None, bool, list[tuple[str, tuple[float | None, ...]]] | None]:
    """How the card names the teacher, whether it is local (no Hub link), and an ensemble's members with their
    card metrics (None for a single teacher)."""
    teacher_name = info.teacher_name
    teacher_local = info.teacher_local if info.teacher_local is not None else is_local_path(teacher_name or "")
    teacher = text.model_link(teacher_name, teacher_local) if teacher_name else None
    members = None
    if info.teacher_ensemble is not None:  # several teachers: each by name and metrics, then the ensemble
        records = info.teacher_ensemble["members"]
        teacher = text.ensemble_text(info.teacher_ensemble, records)
        members = [
            (m["name_or_path"], text.member_values(info.teacher_metrics, i, columns)) for i, m in enumerate(records)
        ]
    return teacher, teacher_local, members


def training_hyperparameters(args: Any) -> dict[str, Any]:
    """The `TrainingArguments` a reader needs to reproduce a run, for the card's hyperparameter list."""
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return {
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_train_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * max(args.world_size, 1),
        "num_train_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps > 0 else None,
        "optimizer": getattr(args, "distill_timm_optimizer", None) or str(getattr(args.optim, "value", args.optim)),
        "optimizer_kwargs": getattr(args, "distill_timm_optimizer_kwargs", None) or None,
        "weight_decay_on_all_parameters": getattr(args, "distill_decay_all_parameters", False) or None,
        "no_weight_decay_on_1d_parameters": getattr(args, "distill_no_decay_1d", False) or None,
        "max_grad_norm": args.max_grad_norm,
        "ema_decay": args.distill_ema_decay if getattr(args, "distill_ema", False) else None,
        "lr_scheduler_type": _schedule(args),
        "warmup_steps": args.warmup_steps or None,
        "weight_decay": args.weight_decay,
        "label_smoothing_factor": args.label_smoothing_factor or None,
        "mixup_alpha": getattr(args, "distill_mixup", 0.0) or None,
        "cutmix_alpha": getattr(args, "distill_cutmix", 0.0) or None,
        "mixed_precision": precision,
        "seed": args.seed,
        "num_processes": args.world_size,
    }


def _drop_path_rate(config: Any) -> float | None:
    """The student's stochastic depth rate, where it has one that is not 0 (timm's model argument, or the config's)."""
    rate = (getattr(config, "model_args", None) or {}).get("drop_path_rate", getattr(config, "drop_path_rate", None))
    return rate or None


def _schedule(args: Any) -> str:
    """The learning-rate schedule the run used: hfkd's own (`distill_lr_milestones`, `distill_lr_decay_epochs`)
    replace the Trainer's `lr_scheduler_type`, which the card must then not name."""
    unit = getattr(args, "distill_lr_milestones_unit", "epochs")
    milestones = getattr(args, "distill_lr_milestones", None)
    decay_every = getattr(args, "distill_lr_decay_epochs", None)
    if milestones is not None:
        marks = ", ".join(f"{m:g}" for m in milestones)
        return f"multi-step: x{args.distill_lr_gamma:g} after {unit} {marks}"
    if decay_every is not None:
        text = f"step: x{args.distill_lr_gamma:g} every {decay_every:g} {unit}"
        if args.distill_lr_warmup_epochs:
            warmup, start = args.distill_lr_warmup_epochs, args.distill_lr_warmup_lr
            text += f", after a warm-up of {warmup:g} {unit} in stairs from {start:g}"
        return text
    return str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
