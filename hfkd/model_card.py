"""Model cards for distilled students: Hub metadata, results table, distillation setup, usage and citations."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from numbers import Integral, Real
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

from .losses.base import PaperRef

logger = logging.get_logger(__name__)

# Mirrors `hfkd.arguments.CE_ONLY`, not imported so that building a card never needs `TrainingArguments`.
CE_ONLY = "ce"
_TEMPLATE = "templates/model_card.md"
_HUB_URL = "https://huggingface.co"
_TASK = "image-classification"
_MISSING = "–"
# `datasets` builders for local files: a dataset *format*, not a dataset id on the Hub.
_PACKAGED_BUILDERS = frozenset(
    "arrow audiofolder csv generator imagefolder json pandas parquet sql text videofolder webdataset xml".split()
)
_FILE_SUFFIX = re.compile(r"\.(arrow|csv|gz|json|jsonl|parquet|tar|tsv|txt|zip)$", re.IGNORECASE)
_METRIC_PREFIXES = ("eval_", "test_", "")
_TOP1_NAMES = ("accuracy", "top1_accuracy")
_TOP5_NAMES = ("top5_accuracy",)


def _is_local_path(name: str) -> bool:
    if name.startswith(("local-dir:", "/", "./", "../", "~", "\\")) or "\\" in name or name in (".", ".."):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", name) or _FILE_SUFFIX.search(name):
        return True
    # Same precedence as `from_pretrained` / `load_dataset`: an existing folder wins over a Hub id.
    return os.path.exists(os.path.expanduser(name))


def _hub_id(name: str | None, *, require_namespace: bool) -> str | None:
    """`name` as a Hub repo id, or `None` when it is a local path, a builder name or not a valid id."""
    if not name:
        return None
    name = name.removeprefix("hf-hub:")
    if _is_local_path(name) or (require_namespace and name.count("/") != 1):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _hub_dataset_id(name: str | None) -> str | None:
    repo_id = _hub_id(name, require_namespace=False)
    return None if repo_id is None or repo_id.lower() in _PACKAGED_BUILDERS else repo_id


def _pick_accuracy(metrics: dict[str, float] | None, names: tuple[str, ...], which: str) -> float | None:
    if not metrics:
        return None
    for prefix in _METRIC_PREFIXES:
        for name in names:
            key = prefix + name
            if key not in metrics or metrics[key] is None:
                continue
            value = metrics[key]
            if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"`{which}[{key!r}]` is {value!r}, which is not an accuracy fraction in [0, 1]. Pass fractions "
                    "as returned by `Trainer.evaluate()` (e.g. 0.7612, not 76.12)."
                )
            return float(value)
    return None


def _accuracies(metrics: dict[str, float] | None, which: str) -> tuple[float | None, float | None]:
    return _pick_accuracy(metrics, _TOP1_NAMES, which), _pick_accuracy(metrics, _TOP5_NAMES, which)


def _known(values: tuple[float | None, ...]) -> bool:
    return any(value is not None for value in values)


def _percent(value: float | None) -> str:
    return _MISSING if value is None else f"{100 * value:.2f}"


def _delta(student: float | None, baseline: float | None) -> str:
    return _MISSING if student is None or baseline is None else f"{100 * (student - baseline):+.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _value(value: Any) -> str:
    """A hyperparameter as card text; `float()` first so that numpy scalars read like Python numbers."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))
    return json.dumps(value, default=str, ensure_ascii=False)


def _model_link(name: str) -> str:
    repo_id = _hub_id(name, require_namespace=True)
    return f"[`{repo_id}`]({_HUB_URL}/{repo_id})" if repo_id else f"`{name}`"


def _dataset_link(name: str, config: str | None) -> str:
    repo_id = _hub_dataset_id(name)
    link = f"[`{repo_id}`]({_HUB_URL}/datasets/{repo_id})" if repo_id else f"`{name}`"
    return f"{link} (config `{config}`)" if config else link


def _eval_results(
    top1: float | None, top5: float | None, dataset_name: str | None, dataset_config: str | None
) -> list[EvalResult] | None:
    if top1 is None and top5 is None:
        return None
    dataset_type = _hub_dataset_id(dataset_name)
    if dataset_type is not None:
        pretty_name = dataset_name.removeprefix("hf-hub:")
    elif dataset_name and dataset_name.lower() in _PACKAGED_BUILDERS:
        dataset_type = pretty_name = dataset_name.lower()
    elif dataset_name:
        # A local folder: the model-index needs a dataset, but the path itself stays out of the metadata.
        dataset_type = "imagefolder"
        pretty_name = os.path.basename(os.path.normpath(dataset_name.removeprefix("local-dir:"))) or "local"
    else:
        dataset_type, pretty_name = "custom", "custom"
    common = {
        "task_type": _TASK,
        "task_name": "Image Classification",
        "dataset_type": dataset_type,
        "dataset_name": pretty_name,
        "dataset_config": dataset_config,
        "metric_type": "accuracy",
    }
    results = []
    if top1 is not None:
        results.append(EvalResult(metric_value=top1, metric_name="Top-1 Accuracy", **common))
    if top5 is not None:
        results.append(EvalResult(metric_value=top5, metric_name="Top-5 Accuracy", metric_args={"k": 5}, **common))
    return results


def _results_rows(
    student: tuple[float | None, float | None],
    teacher: tuple[float | None, float | None],
    baseline: tuple[float | None, float | None],
    teacher_name: str | None,
) -> list[dict[str, str]]:
    rows = [{"label": "Student (this model)", "top1": _percent(student[0]), "top5": _percent(student[1])}]
    if teacher_name or _known(teacher):
        label = f"Teacher (`{_cell(teacher_name)}`)" if teacher_name else "Teacher"
        rows.append({"label": label, "top1": _percent(teacher[0]), "top5": _percent(teacher[1])})
    if _known(baseline):
        label = "CE-only baseline (same student, no teacher)"
        rows.append({"label": label, "top1": _percent(baseline[0]), "top5": _percent(baseline[1])})
        deltas = {"top1": _delta(student[0], baseline[0]), "top5": _delta(student[1], baseline[1])}
        if deltas != {"top1": _MISSING, "top5": _MISSING}:
            rows.append({"label": "Δ student − baseline (points)", **deltas})
    return rows


def _summary(
    student_name: str, teacher_name: str | None, loss_key: str, paper: PaperRef | None, dataset: str | None
) -> str:
    on_dataset = f" on {dataset}" if dataset else ""
    if loss_key == CE_ONLY:
        return f"This model is {_model_link(student_name)} trained with cross-entropy only (no teacher){on_dataset}."
    method = f"**{loss_key.upper()}**"
    if paper is not None:
        method += f" ([{paper.title}]({paper.url}))" if paper.url else f" (*{paper.title}*)"
    from_teacher = f" distilled from {_model_link(teacher_name)}" if teacher_name else " trained"
    return f"This model is {_model_link(student_name)}{from_teacher} with {method}{on_dataset}."


def _timm_refs(hub_model_id: str | None, output_dir: str | None, model_name: str) -> list[str]:
    refs = [f"hf-hub:{hub_model_id}"] if hub_model_id else []
    if output_dir is not None:
        refs.append(f"local-dir:{output_dir}")
    refs = refs or [f"hf-hub:{model_name}"]
    return [json.dumps(ref, ensure_ascii=False) for ref in refs]


@dataclass
class ModelCardInfo:
    r"""
    Everything the model card of a distilled student says, in one record (`DistillationTrainer.create_model_card`
    fills it from `distill_config()` and the run's metrics).

    Args:
        model_name (`str`):
            Name of the distilled model: the card's title and the `model-index` name.
        student_name (`str`):
            The student's starting checkpoint (Hub id, `hf-hub:` timm id, timm architecture or local folder).
            It becomes `base_model` only when it is a `namespace/name` Hub id.
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
            Evaluation metrics of the student, e.g. `{"eval_accuracy": 0.76, "eval_top5_accuracy": 0.93}`. Keys
            `accuracy` / `top1_accuracy` and `top5_accuracy` are looked up with an `eval_`, `test_` or no prefix.
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
        **metrics: dict[str, float] | None,
    ) -> ModelCardInfo:
        """The card of a `DistillationTrainer` run: its `distill_config()`, arguments and student config, plus the
        `Trainer.create_model_card` arguments (`finetuned_from`, `dataset`, ...) and the `*_metrics`."""
        teacher = distill_config["teacher"] or {}
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        uses_teacher = distill_config["distill_loss"] != CE_ONLY
        return cls(
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            student_name=finetuned_from or getattr(student_config, "_name_or_path", None) or "student",
            loss_key=distill_config["distill_loss"],
            teacher_name=teacher.get("name_or_path"),
            teacher_revision=teacher.get("revision"),
            loss_kwargs=distill_config["distill_loss_kwargs"],
            paper=paper,
            ce_weight=distill_config["distill_ce_weight"],
            distill_weight=distill_config["distill_weight"] if uses_teacher else 0.0,
            dataset_name=dataset if isinstance(dataset, str) else (dataset[0] if dataset else None),
            dataset_config=dataset_args if isinstance(dataset_args, str) else None,
            hyperparameters=training_hyperparameters(args),
            is_timm=getattr(student_config, "model_type", None) == "timm_wrapper" if is_timm is None else is_timm,
            hub_model_id=args.hub_model_id if args.push_to_hub else None,
            license=license,
            extra_tags=[t for t in extra_tags if t not in ("hfkd", "knowledge-distillation")],
            **metrics,
        )


def build_model_card(info: ModelCardInfo, output_dir: str | None = None) -> ModelCard:
    r"""
    Builds the model card of a distilled student from `info` and, when `output_dir` is given, writes it to
    `output_dir/README.md` (creating the folder).

    The YAML metadata carries `library_name`, the tags (`hfkd`, `knowledge-distillation`, `distill-<loss_key>`,
    `image-classification`), `base_model` and `datasets` (Hub ids only, never local paths), `metrics` and a
    `model-index` holding the student's top-1 and top-5 accuracy as **fractions in [0, 1]**, exactly as passed.
    The body (template `hfkd/templates/model_card.md`) shows them as percentages.

    Returns:
        [`huggingface_hub.ModelCard`]: the rendered card.
    """
    model_name, student_name, loss_key = info.model_name, info.student_name, info.loss_key
    teacher_name, dataset_name, dataset_config = info.teacher_name, info.dataset_name, info.dataset_config
    for name, value in (("model_name", model_name), ("student_name", student_name), ("loss_key", loss_key)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"`{name}` must be a non-empty string, got {value!r}. Pass the {name.replace('_', ' ')}.")
    if info.extra_tags is not None and not all(isinstance(tag, str) and tag for tag in info.extra_tags):
        raise ValueError(f"`extra_tags` must be a list of non-empty strings, got {info.extra_tags!r}.")

    student_acc = _accuracies(info.student_metrics, "student_metrics")
    teacher_acc = _accuracies(info.teacher_metrics, "teacher_metrics")
    baseline_acc = _accuracies(info.baseline_metrics, "baseline_metrics")
    hub_dataset = _hub_dataset_id(dataset_name)
    eval_results = _eval_results(*student_acc, dataset_name, dataset_config)

    tags = ["hfkd", "knowledge-distillation", f"distill-{loss_key}", _TASK] + (["timm"] if info.is_timm else [])
    card_data = ModelCardData(
        library_name="timm" if info.is_timm else "transformers",
        license=info.license,
        tags=tags + list(info.extra_tags or []),
        base_model=_hub_id(student_name, require_namespace=True),
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["accuracy"],
        pipeline_tag=_TASK,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
    )

    repo_ref = info.hub_model_id or output_dir or model_name
    dataset_text = _dataset_link(dataset_name, dataset_config) if dataset_name else None
    card = ModelCard.from_template(
        card_data,
        template_str=resources.files(__package__).joinpath(_TEMPLATE).read_text(encoding="utf-8"),
        hfkd_title=model_name,
        hfkd_summary=_summary(student_name, teacher_name, loss_key, info.paper, dataset_text),
        hfkd_results=_results_rows(student_acc, teacher_acc, baseline_acc, teacher_name),
        hfkd_has_metrics=_known(student_acc + teacher_acc + baseline_acc),
        hfkd_ce_only=loss_key == CE_ONLY,
        hfkd_student=_model_link(student_name),
        hfkd_teacher=_model_link(teacher_name) if teacher_name else None,
        hfkd_teacher_revision=info.teacher_revision,
        hfkd_loss_key=loss_key,
        hfkd_loss_name=loss_key.upper(),
        hfkd_loss_kwargs=[(_cell(str(k)), _cell(_value(v))) for k, v in sorted((info.loss_kwargs or {}).items())],
        hfkd_ce_weight=_value(float(info.ce_weight)),
        hfkd_distill_weight=_value(float(info.distill_weight)),
        hfkd_paper=info.paper,
        hfkd_hyperparameters=[(k, _value(v)) for k, v in (info.hyperparameters or {}).items() if v is not None],
        hfkd_repo_literal=json.dumps(repo_ref, ensure_ascii=False),
        hfkd_timm_refs=_timm_refs(info.hub_model_id, output_dir, model_name) if info.is_timm else [],
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "README.md")
        card.save(path)
        logger.info(f"Model card written to {path}")
    return card


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
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps or None,
        "weight_decay": args.weight_decay,
        "label_smoothing_factor": args.label_smoothing_factor or None,
        "mixed_precision": precision,
        "seed": args.seed,
        "num_processes": args.world_size,
    }
