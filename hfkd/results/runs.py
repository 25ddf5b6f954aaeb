"""Finished distillation runs read back and grouped into a results table next to the published numbers.

A finished run is a folder holding `distill_config.json`, `trainer_state.json` and `eval_results.json` (what
`hfkd distill` writes at the end). A run is judged by its task's headline metric (`Task.metric` of the `task` in
`distill_config.json`; runs written before it was recorded are image classification): top-1 accuracy
(`eval_accuracy`) for classification, mean IoU (`eval_mean_iou`) for semantic segmentation. Runs are grouped by the
recipe they were launched with (else by student, teacher and loss), so the seeds of one recipe form one row; runs of
different tasks never share a group. Each row gives the mean ± std over seeds of the best-epoch metric (its maximum
over the evaluations in `log_history`, which is what the papers report) and of the final one (`eval_results.json`),
next to the published number read from the recipe's header line (`# published_top1: <number>`,
`# published_miou:`, `# published_map:`: `HEADLINES`), the difference best − published, the CE baseline (the
best-epoch metric of the `distill_loss: ce` runs of the same task and student architecture on the same dataset), the
teacher's own number (`teacher_eval_<metric>` in `teacher_eval_results.json`) and where the teacher came from:
`released` (a released checkpoint converted by `hfkd convert`), `hfkd-trained`, `Hub` (a Hub or timm checkpoint of
unrecorded origin) or `—` (not known). Numbers are in percent. The chart (`hfkd.results.plot`) draws one bar per
row, grouped by student, with the CE baseline, the teacher and the published number beside it.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import is_local_path

RUN_FILES = ("distill_config.json", "trainer_state.json", "eval_results.json")


CLASSIFICATION = "image-classification"
"""The task of a run whose `distill_config.json` names none (`hfkd.tasks.base.CLASSIFICATION`)."""


@dataclass(frozen=True)
class Headline:
    """How the report names a task's headline metric (its `Task.metric`): `key` in the recipe header line of the
    published number (`# published_<key>:`) and in JSON keys (`teacher_<key>`), `name` in table columns, `long_name`
    on the chart's axis and in the JSON."""

    key: str
    name: str
    long_name: str


# By task name (`hfkd.tasks.base.TASK_NAMES`; spelled out so that the report's tables need no torch).
HEADLINES = {
    CLASSIFICATION: Headline("top1", "top-1", "top-1 accuracy"),
    "semantic-segmentation": Headline("miou", "mIoU", "mean IoU"),
    "object-detection": Headline("map", "mAP", "box mAP"),
    "image-feature-extraction": Headline("knn", "k-NN top-1", "k-NN top-1 accuracy"),
}


# Config fields that tell two transformers students of one class apart (timm configs name the model itself; smp
# configs their architecture and encoder).
STRUCTURE_KEYS = (
    "model_type model_args embedding_size hidden_sizes depths hidden_size num_hidden_layers num_attention_heads "
    "intermediate_size patch_size image_size encoder_name output_stride decoder_channels"
).split()


def headline(task: str) -> Headline:
    """How the report names the headline metric of `task`."""
    if task not in HEADLINES:
        raise UsageError(f"hfkd report does not know the task {task!r}: add it to hfkd.results.runs.HEADLINES.")
    return HEADLINES[task]


@functools.cache
def _task(name: str) -> Any:
    # The task's metric and model names; imported here, as hfkd.tasks loads torch, which the tables do not need.
    from hfkd.tasks.registry import get_task

    return get_task(name)


def headline_metric(task: str) -> str:
    """The metric a run of `task` is judged by (`eval_<metric>` in its files): the task's `Task.metric`."""
    return _task(task).metric


@dataclass
class RunResult:
    """One finished run: where it is, what it distilled, and its task's headline metric (best epoch, final, and its
    teacher's) in percent."""

    path: str
    group: str
    recipe: str | None
    student: str | None
    teacher: str | None
    loss: str | None
    best_value: float
    final_value: float
    best_epoch: float | None
    name: str = ""
    dataset: str | None = None
    student_key: str | None = None
    teacher_value: float | None = None
    teacher_origin: str | None = None
    teacher_provenance: str | None = None
    recipe_file: str | None = None
    task: str = CLASSIFICATION

    # The names of the classification-only report.
    best_top1 = property(lambda self: self.best_value)
    final_top1 = property(lambda self: self.final_value)
    teacher_top1 = property(lambda self: self.teacher_value)


@dataclass
class GroupSummary:
    """The runs of one recipe (or student/teacher/loss triple) of one task across seeds, in percent of the task's
    headline metric; `label` is the short display name."""

    group: str
    recipe: str | None
    loss: str | None
    num_runs: int
    best_mean: float
    best_std: float
    final_mean: float
    final_std: float
    published: float | None
    diff: float | None
    runs: list[str] = field(default_factory=list)
    label: str = ""
    student: str | None = None
    dataset: str | None = None
    teacher: str | None = None
    teacher_value: float | None = None
    teacher_origin: str | None = None
    teacher_provenance: str | None = None
    baseline_value: float | None = None
    baseline_runs: int = 0
    student_key: str | None = None
    task: str = CLASSIFICATION

    # The names of the classification-only report.
    teacher_top1 = property(lambda self: self.teacher_value)
    baseline_top1 = property(lambda self: self.baseline_value)


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every folder under `paths` (recursively, `paths` included) that holds all of `RUN_FILES`, sorted."""
    found = set()
    for root in map(Path, paths):
        candidates = [root, *root.rglob("*")] if root.is_dir() else []
        for folder in candidates:
            if folder.is_dir() and all((folder / name).is_file() for name in RUN_FILES):
                found.add(folder)
    return sorted(found)


def run_name(run_dir: str | Path, roots: list[str | Path]) -> str:
    """A run folder as `<searched folder's name>/<path below it>`, never an absolute path."""
    run_dir = Path(run_dir).resolve()
    for root in map(lambda r: Path(r).resolve(), roots):
        if run_dir == root or root in run_dir.parents:
            return (Path(root.name) / run_dir.relative_to(root)).as_posix().removeprefix("./")
    return run_dir.name


def published_line(task: str) -> re.Pattern[str]:
    """The recipe header line of a `task`'s published number: `# published_<key>: <number>` (`HEADLINES`)."""
    return re.compile(rf"^#\s*published_{re.escape(headline(task).key)}:\s*(\S+)\s*$", re.MULTILINE)


def read_published(recipe: str | Path, task: str = CLASSIFICATION) -> float | None:
    """The number on the recipe's `# published_<key>:` line for `task` (`# published_top1:` for classification,
    `# published_miou:` for segmentation); `None` when absent, `null` or unreadable."""
    try:
        text = Path(recipe).read_text(encoding="utf-8")
    except OSError:
        return None
    match = published_line(task).search(text)
    if match is None or match.group(1).lower() in ("null", "none", "~"):
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def read_published_top1(recipe: str | Path) -> float | None:
    """The number on the recipe's `# published_top1:` line; `None` when absent, `null` or unreadable."""
    return read_published(recipe, CLASSIFICATION)


def _normalise_recipe(recipe: str | None) -> str | None:
    if not recipe:
        return None
    path = Path(recipe).as_posix()
    # A recipe given as an absolute path or from another folder still groups with its relative spelling; one
    # outside any recipes/ folder is known by its file name (no local path reaches the report).
    return path[path.rfind("recipes/") :] if "recipes/" in path else Path(path).name


def recipe_label(recipe: str) -> str:
    """`recipes/cifar100/kd/x.yaml` -> `cifar100/kd/x`."""
    return re.sub(r"\.ya?ml$", "", recipe.removeprefix("recipes/"))


def _locate_recipe(run: RunResult, recipes_dir: Path | None) -> Path | None:
    candidates = []
    for recipe in dict.fromkeys(r for r in (run.recipe_file, run.recipe) if r):  # as recorded, then as grouped
        candidates += [Path(recipe), Path(run.path) / recipe]
        if recipes_dir is not None:
            candidates += [recipes_dir / recipe.removeprefix("recipes/"), recipes_dir.parent / recipe]
    return next((c for c in candidates if c.is_file()), None)


def short_model_name(name: Any, local: bool | None = None) -> str | None:
    """A model as a label: Hub ids and timm names as they are, a local path (or older runs' `runs/a/b` folders)
    as its folder name."""
    if not isinstance(name, str) or not name:
        return None
    if local or is_local_path(name) or name.count("/") > 1:
        return Path(name.removeprefix("local-dir:").rstrip("/\\")).name or "local"
    return name


def _student(run_dir: Path, task: str) -> tuple[str | None, str | None]:
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return None, None
    config = _read_json(config_file)
    architectures = config.get("architectures") or [None]
    name = (
        config.get("architecture")
        or short_model_name(config.get("_name_or_path"))
        or (architectures[0] or "").removesuffix(_task(task).model_suffix)
        or config.get("model_type")
    )
    if config.get("encoder_name"):  # an smp network: its architecture on which encoder
        name = f"{name} ({config['encoder_name']})"
    structure = {key: config[key] for key in STRUCTURE_KEYS if key in config}
    return name, f"{name} {json.dumps(structure, sort_keys=True)}"


def teacher_origin_kind(teacher: dict[str, Any] | None) -> str | None:
    """`released`, `hfkd-trained`, `Hub`, `other` (another recorded provenance) or `None` (not known), from a
    `distill_config.json` teacher record (`hfkd.teacher.teacher_origin` wrote its `provenance` phrase)."""
    provenance = (teacher or {}).get("provenance") or ""
    if provenance.startswith("released"):
        return "released"
    if provenance.startswith("trained with hfkd"):
        return "hfkd-trained"
    if provenance:
        return "other"
    return "Hub" if teacher and teacher.get("local") is False else None


def _teacher_value(run_dir: Path, metric: str) -> float | None:
    key = f"teacher_eval_{metric}"
    for name in ("teacher_eval_results.json", "all_results.json"):
        if (run_dir / name).is_file() and key in (results := _read_json(run_dir / name)):
            return 100.0 * float(results[key])
    return None


def read_run(run_dir: str | Path, name: str | None = None) -> RunResult:
    """Read one finished run folder into a [`RunResult`] (its task's headline metric in percent); `name` labels it
    (its folder name)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "distill_config.json")
    state = _read_json(run_dir / "trainer_state.json")
    final = _read_json(run_dir / "eval_results.json")
    task = config.get("task") or CLASSIFICATION
    headline(task)  # a task the report can name
    metric = headline_metric(task)
    key = f"eval_{metric}"
    if key not in final:
        raise UsageError(f"{run_dir / 'eval_results.json'} has no {key}; was the run evaluated?")
    final_value = 100.0 * float(final[key])
    evals = [(float(e[key]), e.get("epoch")) for e in state.get("log_history", []) if key in e]
    best, best_epoch = max(evals, key=lambda pair: pair[0]) if evals else (float(final[key]), None)
    teacher_record = config.get("teacher") or None
    teacher = short_model_name((teacher_record or {}).get("name_or_path"), (teacher_record or {}).get("local"))
    (student, student_key), loss = _student(run_dir, task), config.get("distill_loss")
    recipe = _normalise_recipe(config.get("recipe"))
    group = recipe or (f"{student} ← {teacher} ({loss})" if teacher else f"{student} ({loss}, no teacher)")
    return RunResult(
        path=str(run_dir),
        group=group,
        recipe=recipe,
        student=student,
        teacher=teacher,
        loss=loss,
        best_value=max(100.0 * best, final_value),
        final_value=final_value,
        best_epoch=best_epoch,
        name=name or run_dir.name,
        dataset=short_model_name((config.get("data") or {}).get("dataset")),
        student_key=student_key,
        teacher_value=_teacher_value(run_dir, metric),
        teacher_origin=teacher_origin_kind(teacher_record),
        teacher_provenance=(teacher_record or {}).get("provenance"),
        recipe_file=config.get("recipe"),
        task=task,
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample standard deviation across seeds (n - 1); one seed has no spread to report, so 0.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _joined(values: list[str | None]) -> str | None:
    # One value for the group, or each distinct one when its seeds disagree (a group should not mix teachers).
    distinct = sorted({v for v in values if v is not None})
    return " / ".join(distinct) if distinct else None


def _group_suffix(keys: list[tuple[str, str | None, str]], group: str, dataset: str | None, task: str) -> str:
    """What tells a group from others of its name: runs of one group on different datasets, or of different tasks,
    are not seeds of one result."""
    same = [(d, t) for g, d, t in keys if g == group]
    suffix = f" on {dataset}" if len({d for d, _ in same}) > 1 else ""
    return suffix + (f" ({task})" if len({t for _, t in same}) > 1 else "")


def summarise(runs: list[RunResult], recipes_dir: str | Path | None = None) -> list[GroupSummary]:
    """Group `runs` by task and recipe (else student/teacher/loss), sorted by group name, with the published numbers,
    the CE baseline of the same task, student and dataset (`None` for the CE groups themselves) and the teacher's
    number."""
    recipes_root = Path(recipes_dir) if recipes_dir is not None else None
    by_data: dict[tuple[str, str | None, str], list[RunResult]] = {}
    baselines: dict[tuple[str, str | None, str | None], list[float]] = {}
    for run in runs:
        by_data.setdefault((run.group, run.dataset, run.task), []).append(run)
        if run.loss == "ce":
            baselines.setdefault((run.task, run.student_key, run.dataset), []).append(run.best_value)
    groups = {}
    for key, members in by_data.items():
        suffix = _group_suffix(list(by_data), *key)
        groups[key[0] + suffix] = (suffix, members)
    summaries = []
    for name in sorted(groups):
        suffix, members = groups[name]
        first = members[0]
        label = recipe_label(first.recipe) if first.recipe else first.group
        best_mean, best_std = _mean_std([r.best_value for r in members])
        final_mean, final_std = _mean_std([r.final_value for r in members])
        published = None
        if first.recipe is not None:
            located = _locate_recipe(first, recipes_root)
            published = read_published(located, first.task) if located is not None else None
        teacher_runs = [r.teacher_value for r in members if r.teacher_value is not None]
        baseline = baselines.get((first.task, first.student_key, first.dataset), []) if first.loss != "ce" else []
        summaries.append(
            GroupSummary(
                group=name,
                recipe=first.recipe,
                loss=first.loss,
                num_runs=len(members),
                best_mean=best_mean,
                best_std=best_std,
                final_mean=final_mean,
                final_std=final_std,
                published=published,
                diff=None if published is None else best_mean - published,
                runs=[r.name for r in members],
                label=label + suffix,
                student=first.student,
                dataset=first.dataset,
                teacher=_joined([r.teacher for r in members]),
                teacher_value=statistics.fmean(teacher_runs) if teacher_runs else None,
                teacher_origin=_joined([r.teacher_origin for r in members]),
                teacher_provenance=_joined([r.teacher_provenance for r in members]),
                baseline_value=statistics.fmean(baseline) if baseline else None,
                baseline_runs=len(baseline),
                student_key=first.student_key,
                task=first.task,
            )
        )
    return summaries


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _by_task(summaries: list[GroupSummary]) -> dict[str, list[GroupSummary]]:
    """The summaries of each task, in the order of `HEADLINES`."""
    order = {task: i for i, task in enumerate(HEADLINES)}
    tasks = sorted({s.task for s in summaries}, key=lambda task: (order.get(task, len(order)), task))
    return {task: [s for s in summaries if s.task == task] for task in tasks}


def _table(summaries: list[GroupSummary], name: str) -> list[str]:
    lines = [
        f"| run group (recipe) | loss | seeds | best-epoch {name} | final {name} | published | best − published "
        f"| CE baseline | teacher | teacher {name} | teacher origin |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|:--|--:|:--|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.label} | {s.loss or '—'} | {s.num_runs} | {s.best_mean:.2f} ± {s.best_std:.2f} "
            f"| {s.final_mean:.2f} ± {s.final_std:.2f} | {_fmt(s.published)} | {_fmt(s.diff, signed=True)} "
            f"| {_fmt(s.baseline_value)} | {s.teacher or '—'} | {_fmt(s.teacher_value)} | {s.teacher_origin or '—'} |"
        )
    return lines


def to_markdown(summaries: list[GroupSummary]) -> str:
    """A markdown table, one row per group, whose columns name the task's metric (`best-epoch top-1`,
    `best-epoch mIoU`); runs of several tasks give one table per task, under its name."""
    by_task = _by_task(summaries)
    if len(by_task) <= 1:
        task = next(iter(by_task), CLASSIFICATION)
        return "\n".join(_table(summaries, headline(task).name)) + "\n"
    blocks = []
    for task, members in by_task.items():
        name = headline(task).name
        blocks.append("\n".join([f"### {task} ({name})", "", *_table(members, name)]))
    return "\n\n".join(blocks) + "\n"


def to_json(summaries: list[GroupSummary]) -> dict[str, Any]:
    """The summaries as a JSON-serialisable dict, in percent of each group's metric (`metric`), its teacher's and CE
    baseline's numbers under keys that name it (`teacher_top1`, `baseline_miou`, ...)."""
    groups = []
    for s in summaries:
        named = headline(s.task)
        renamed = {"teacher_value": f"teacher_{named.key}", "baseline_value": f"baseline_{named.key}"}
        group = {renamed.get(k, k): v for k, v in asdict(s).items() if k != "student_key"}
        groups.append({**group, "metric": f"{named.long_name} (%)"})
    metrics = list(dict.fromkeys(f"{headline(task).long_name} (%)" for task in _by_task(summaries)))
    metric = metrics[0] if len(metrics) == 1 else "each group's own (groups[].metric)"
    return {"metric": metric if metrics else f"{HEADLINES[CLASSIFICATION].long_name} (%)", "groups": groups}
