"""The text pieces of a model card: links, names, metric look-ups, the results and training-log tables.

The metric columns are the run's task's `card_metrics` ((metric key, column title) pairs, headline first): top-1 and
top-5 accuracy for image classification, mean IoU, mean accuracy and pixel accuracy for semantic segmentation. Every
value is a fraction in [0, 1], shown in percent.

Local models and datasets are named by their folder name, marked as local (`hfkd.local_names`): a card never holds
an absolute path of the machine it was written on.
"""

from __future__ import annotations

import json
from numbers import Integral, Real
from typing import Any

from huggingface_hub import EvalResult
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hfkd.losses.base import PaperRef
from hfkd.losses.registry import CE_ONLY
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path, neutral_name

_HUB_URL = "https://huggingface.co"


_MISSING = "–"


# `datasets` builders for local files: a dataset *format*, not a dataset id on the Hub.
_PACKAGED_BUILDERS = frozenset(
    "arrow audiofolder csv generator imagefolder json pandas parquet sql text videofolder webdataset xml".split()
)


# Where each row's metrics are looked up: the teacher's metrics carry their own `teacher_eval_` keys, so a merged
# `all_results.json` never lets one model's number stand for the other's.
METRIC_PREFIXES = {"teacher_metrics": ("teacher_eval_", "eval_", "test_", ""), None: ("eval_", "test_", "")}


# Other names under which a card metric was recorded (older runs, other callers).
METRIC_ALIASES: dict[str, tuple[str, ...]] = {"accuracy": ("top1_accuracy",)}


# `model-index` entries that are not named after their column: top-5 is an `accuracy` with k=5 on the Hub.
HUB_METRICS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "accuracy": ("accuracy", "Top-1 Accuracy", None),
    "top5_accuracy": ("accuracy", "Top-5 Accuracy", {"k": 5}),
}


Columns = tuple[tuple[str, str], ...]
"""A task's `card_metrics`: (metric key, column title) pairs, headline first."""


def hub_id(name: str | None, *, require_namespace: bool) -> str | None:
    """`name` as a Hub repo id, or `None` when it is a local path, a builder name or not a valid id."""
    if not name:
        return None
    name = name.removeprefix("hf-hub:")
    if is_local_path(name) or (require_namespace and name.count("/") != 1):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def hub_dataset_id(name: str | None) -> str | None:
    repo_id = hub_id(name, require_namespace=False)
    return None if repo_id is None or repo_id.lower() in _PACKAGED_BUILDERS else repo_id


def pick_metric(metrics: dict[str, float] | None, key: str, which: str) -> float | None:
    """Metric `key` (or an alias) of `metrics`, with the prefixes of `METRIC_PREFIXES[which]`; a fraction in [0, 1]."""
    if not metrics:
        return None
    for prefix in METRIC_PREFIXES.get(which, METRIC_PREFIXES[None]):
        for name in (key, *METRIC_ALIASES.get(key, ())):
            found = prefix + name
            if found not in metrics or metrics[found] is None:
                continue
            value = metrics[found]
            if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
                raise UsageError(
                    f"`{which}[{found!r}]` is {value!r}, which is not a fraction in [0, 1]. Pass fractions as "
                    "returned by `Trainer.evaluate()` (e.g. 0.7612, not 76.12)."
                )
            return float(value)
    return None


def metric_values(metrics: dict[str, float] | None, columns: Columns, which: str) -> tuple[float | None, ...]:
    """One value per card metric (`None`: not measured)."""
    return tuple(pick_metric(metrics, key, which) for key, _ in columns)


def member_values(metrics: dict[str, float] | None, member: int, columns: Columns) -> tuple[float | None, ...]:
    """Teacher `member` of an ensemble: its `teacher_eval_member_<i>_` metrics (`Trainer.evaluate_teacher`)."""
    prefix = f"teacher_eval_member_{member}_"
    mine = {key.removeprefix(prefix): value for key, value in (metrics or {}).items() if key.startswith(prefix)}
    return metric_values(mine, columns, f"teacher_metrics (member {member})")


def ensemble_text(ensemble: dict[str, Any], members: list[dict[str, Any]]) -> str:
    """How a teacher ensemble is named in the card: its members, linked, and how their outputs were combined."""
    links = [model_link(str(m.get("name_or_path")), m.get("local")) for m in members]
    weights = ", ".join(f"{w:.3g}" for w in ensemble.get("weights") or [])
    if ensemble.get("mode") == "logits":
        rule = f"their logits averaged with weights {weights}"
    else:
        rule = f"their probabilities averaged with weights {weights} at temperature {ensemble.get('temperature'):g}"
    return f"an ensemble of {len(links)} teachers ({', '.join(links)}), {rule}"


def known(values: tuple[float | None, ...]) -> bool:
    return any(value is not None for value in values)


def percent(value: float | None) -> str:
    return _MISSING if value is None else f"{100 * value:.2f}"


def delta(student: float | None, baseline: float | None) -> str:
    return _MISSING if student is None or baseline is None else f"{100 * (student - baseline):+.2f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def value_text(value: Any) -> str:
    """A hyperparameter as card text; `float()` first so that numpy scalars read like Python numbers."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))
    return json.dumps(value, default=str, ensure_ascii=False)


def model_link(name: str, local: bool | None = None) -> str:
    """A Hub id as a link, a local folder as "a local checkpoint (`name`)", anything else (a timm name) as code.
    `local` says it when the name is already a folder name (`None`: judge by the path)."""
    if local or (local is None and is_local_path(name)):
        return f"a local checkpoint (`{neutral_name(name)}`)"
    repo_id = hub_id(name, require_namespace=True)
    return f"[`{repo_id}`]({_HUB_URL}/{repo_id})" if repo_id else f"`{name}`"


def dataset_link(name: str, config: str | None) -> str:
    if is_local_path(name):
        link = f"a local dataset (`{neutral_name(name)}`)"
    else:
        repo_id = hub_dataset_id(name)
        link = f"[`{repo_id}`]({_HUB_URL}/datasets/{repo_id})" if repo_id else f"`{name}`"
    return f"{link} (config `{config}`)" if config else link


def hub_metric(key: str, title: str) -> tuple[str, str, dict[str, Any] | None]:
    """(type, name, args) of a card metric in the `model-index`: `HUB_METRICS`, else its key and column title."""
    return HUB_METRICS.get(key, (key, title.removesuffix(" (%)"), None))


def hub_metric_types(columns: Columns) -> list[str]:
    """The metadata's `metrics`: the card metrics' `model-index` types, each once."""
    return list(dict.fromkeys(hub_metric(key, title)[0] for key, title in columns))


def eval_results(
    values: tuple[float | None, ...],
    columns: Columns,
    task: tuple[str, str],
    dataset_name: str | None,
    dataset_config: str | None,
) -> list[EvalResult] | None:
    """The `model-index` results: one per measured card metric; `task` is (pipeline tag, readable name)."""
    if not known(values):
        return None
    dataset_type = hub_dataset_id(dataset_name)
    if dataset_type is not None:
        pretty_name = dataset_name.removeprefix("hf-hub:")
    elif dataset_name and dataset_name.lower() in _PACKAGED_BUILDERS:
        dataset_type = pretty_name = dataset_name.lower()
    elif dataset_name:
        # A local folder: the model-index needs a dataset, but the path itself stays out of the metadata.
        dataset_type = "imagefolder"
        pretty_name = neutral_name(dataset_name)
    else:
        dataset_type, pretty_name = "custom", "custom"
    common = {
        "task_type": task[0],
        "task_name": task[1],
        "dataset_type": dataset_type,
        "dataset_name": pretty_name,
        "dataset_config": dataset_config,
    }
    results = []
    for value, (key, title) in zip(values, columns):
        if value is not None:
            metric_type, name, metric_args = hub_metric(key, title)
            metric = {"metric_type": metric_type, "metric_name": name, "metric_args": metric_args}
            results.append(EvalResult(metric_value=value, **metric, **common))
    return results


def _row(label: str, values: tuple[float | None, ...]) -> dict[str, Any]:
    return {"label": label, "values": [percent(value) for value in values]}


def results_rows(
    student: tuple[float | None, ...],
    teacher: tuple[float | None, ...],
    baseline: tuple[float | None, ...],
    teacher_name: str | None,
    members: list[tuple[str, tuple[float | None, ...]]] | None = None,
) -> list[dict[str, Any]]:
    """The results table, one value per card metric: the student, the teacher (an ensemble's members, then the
    ensemble), the CE baseline and the student's difference from it in points."""
    rows = [_row("Student (this model)", student)]
    for i, (name, values) in enumerate(members or []):
        rows.append(_row(f"Teacher {i + 1} (`{cell(neutral_name(name))}`)", values))
    if members:
        rows.append(_row("Teacher ensemble", teacher))
    elif teacher_name or known(teacher):
        rows.append(_row(f"Teacher (`{cell(neutral_name(teacher_name))}`)" if teacher_name else "Teacher", teacher))
    if known(baseline):
        rows.append(_row("CE-only baseline (same student, no teacher)", baseline))
        deltas = [delta(s, b) for s, b in zip(student, baseline)]
        if any(d != _MISSING for d in deltas):
            rows.append({"label": "Δ student − baseline (points)", "values": deltas})
    return rows


def task_title(task: str) -> str:
    """A task's name as the `model-index` writes it: `semantic-segmentation` -> `Semantic Segmentation`."""
    return task.replace("-", " ").title()


def task_text(task: str, pipeline_tag: str) -> str:
    """The task as the card's text names it, with the pipeline that serves it."""
    return f"{task.replace('-', ' ')} (the `{pipeline_tag}` pipeline)"


def student_text(name: str, from_scratch: bool, architecture: str | None) -> str:
    """How the card names the student: its starting checkpoint, or its architecture trained from scratch."""
    if from_scratch:
        return f"`{architecture or neutral_name(name)}` trained from scratch (random initialisation)"
    return model_link(name)


def summary(student: str, teacher: str | None, loss_key: str, paper: PaperRef | None, dataset: str | None) -> str:
    """The card's first sentence; `student` and `teacher` as `student_text` and `model_link` give them."""
    on_dataset = f" on {dataset}" if dataset else ""
    if loss_key == CE_ONLY:
        return f"This model is {student}, trained with cross-entropy only (no teacher){on_dataset}."
    method = f"**{loss_key.upper()}**"
    if paper is not None:
        method += f" ([{paper.title}]({paper.url}))" if paper.url else f" (*{paper.title}*)"
    from_teacher = f", distilled from {teacher}" if teacher else ", trained"
    return f"This model is {student}{from_teacher} with {method}{on_dataset}."


def timm_refs(hub_model_id: str | None, output_dir: str | None, model_name: str) -> list[str]:
    """`timm.create_model` references: the Hub repo when pushed; else the output folder, by its name."""
    if hub_model_id:
        refs = [f"hf-hub:{hub_model_id}"]
    elif output_dir is not None:
        refs = [f"local-dir:{neutral_name(output_dir) if is_local_path(output_dir) else output_dir}"]
    else:
        refs = [f"hf-hub:{model_name}"]
    return [json.dumps(ref, ensure_ascii=False) for ref in refs]


def repo_reference(hub_model_id: str | None, output_dir: str | None, model_name: str) -> str:
    """What the usage snippets load: the Hub repo when pushed, else the output folder by its name."""
    if hub_model_id:
        return hub_model_id
    if output_dir is not None:
        return neutral_name(output_dir) if is_local_path(output_dir) else output_dir
    return model_name


def training_log_rows(log_history: list[dict[str, Any]] | None, columns: Columns) -> list[dict[str, Any]]:
    """One row per evaluation during training (as transformers' cards list them), with the last training loss before
    it and the card metrics (`eval_<key>`). The evaluations after training (the final one, on the same or the best
    checkpoint) are the Results table's: they come after the `train_runtime` summary and are not repeated here."""
    rows, last_loss = [], None
    keys = [f"eval_{key}" for key, _ in columns]
    for entry in log_history or []:
        if "train_runtime" in entry:
            break
        if "loss" in entry:
            last_loss = entry["loss"]
        if any(key in entry for key in keys):
            row = {"epoch": _number(entry.get("epoch"), 2), "step": str(entry.get("step", _MISSING))}
            row.update(train_loss=_number(last_loss, 4), eval_loss=_number(entry.get("eval_loss"), 4))
            row["values"] = [percent(entry.get(key)) for key in keys]
            rows.append(row)
    return rows


def crop_text(crop: Any) -> str:
    """A training crop as `height x width` (`[512, 1024]`, `{"height": 512, "width": 1024}`; one side: square)."""
    if isinstance(crop, dict) and {"height", "width"} <= set(crop):
        crop = [crop["height"], crop["width"]]
    if isinstance(crop, Integral) and not isinstance(crop, bool):
        crop = [crop, crop]
    if isinstance(crop, (list, tuple)) and len(crop) == 2:
        return f"{value_text(crop[0])} x {value_text(crop[1])}"
    return value_text(crop)


def _number(value: Any, digits: int) -> str:
    return _MISSING if not isinstance(value, Real) else f"{float(value):.{digits}f}"
