"""Finished distillation runs read back and grouped into a results table next to the published numbers.

A finished run is a folder holding `distill_config.json`, `trainer_state.json` and `eval_results.json` (what
`hfkd distill` writes at the end). Runs are grouped by the recipe they were launched with (else by
student, teacher and loss), so the seeds of one recipe form one row. Each row gives the mean ± std over seeds of
the best-epoch top-1 (the maximum `eval_accuracy` over the evaluations in `log_history`, which is what the papers
report) and of the final top-1 (`eval_results.json`), next to the published top-1 read from the recipe's
`# published_top1: <number>` header line, the difference best − published, the CE baseline (the best-epoch top-1
of the `distill_loss: ce` runs of the same student architecture on the same dataset), the teacher's own top-1
(`teacher_eval_results.json`) and where the teacher came from: `released` (a released checkpoint converted by
`hfkd convert`), `hfkd-trained`, `Hub` (a Hub or timm checkpoint of unrecorded origin) or `—` (not known).
The chart (`hfkd.results.plot`) draws one bar per row, grouped by student, with the CE baseline, the teacher and the
published number beside it.
"""

from __future__ import annotations

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


PUBLISHED_LINE = re.compile(r"^#\s*published_top1:\s*(\S+)\s*$", re.MULTILINE)


# Config fields that tell two transformers students of one class apart (timm configs name the model itself).
STRUCTURE_KEYS = (
    "model_type model_args embedding_size hidden_sizes depths hidden_size num_hidden_layers num_attention_heads "
    "intermediate_size patch_size image_size"
).split()


@dataclass
class RunResult:
    """One finished run: where it is, what it distilled, and its top-1 (and its teacher's) in percent."""

    path: str
    group: str
    recipe: str | None
    student: str | None
    teacher: str | None
    loss: str | None
    best_top1: float
    final_top1: float
    best_epoch: float | None
    name: str = ""
    dataset: str | None = None
    student_key: str | None = None
    teacher_top1: float | None = None
    teacher_origin: str | None = None
    teacher_provenance: str | None = None
    recipe_file: str | None = None


@dataclass
class GroupSummary:
    """The runs of one recipe (or student/teacher/loss triple) across seeds; `label` is the short display name."""

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
    teacher_top1: float | None = None
    teacher_origin: str | None = None
    teacher_provenance: str | None = None
    baseline_top1: float | None = None
    baseline_runs: int = 0
    student_key: str | None = None


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


def read_published_top1(recipe: str | Path) -> float | None:
    """The number on the recipe's `# published_top1:` line; `None` when absent, `null` or unreadable."""
    try:
        text = Path(recipe).read_text(encoding="utf-8")
    except OSError:
        return None
    match = PUBLISHED_LINE.search(text)
    if match is None or match.group(1).lower() in ("null", "none", "~"):
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


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


def _student(run_dir: Path) -> tuple[str | None, str | None]:
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return None, None
    config = _read_json(config_file)
    architectures = config.get("architectures") or [None]
    name = (
        config.get("architecture")
        or short_model_name(config.get("_name_or_path"))
        or (architectures[0] or "").removesuffix("ForImageClassification")
        or config.get("model_type")
    )
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


def _teacher_top1(run_dir: Path) -> float | None:
    for name in ("teacher_eval_results.json", "all_results.json"):
        if (run_dir / name).is_file() and "teacher_eval_accuracy" in (results := _read_json(run_dir / name)):
            return 100.0 * float(results["teacher_eval_accuracy"])
    return None


def read_run(run_dir: str | Path, name: str | None = None) -> RunResult:
    """Read one finished run folder into a [`RunResult`] (top-1 in percent); `name` labels it (its folder name)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "distill_config.json")
    state = _read_json(run_dir / "trainer_state.json")
    final = _read_json(run_dir / "eval_results.json")
    if "eval_accuracy" not in final:
        raise UsageError(f"{run_dir / 'eval_results.json'} has no eval_accuracy; was the run evaluated?")
    final_top1 = 100.0 * float(final["eval_accuracy"])
    evals = [(float(e["eval_accuracy"]), e.get("epoch")) for e in state.get("log_history", []) if "eval_accuracy" in e]
    best_acc, best_epoch = max(evals, key=lambda pair: pair[0]) if evals else (float(final["eval_accuracy"]), None)
    teacher_record = config.get("teacher") or None
    teacher = short_model_name((teacher_record or {}).get("name_or_path"), (teacher_record or {}).get("local"))
    (student, student_key), loss = _student(run_dir), config.get("distill_loss")
    recipe = _normalise_recipe(config.get("recipe"))
    group = recipe or (f"{student} ← {teacher} ({loss})" if teacher else f"{student} ({loss}, no teacher)")
    return RunResult(
        path=str(run_dir),
        group=group,
        recipe=recipe,
        student=student,
        teacher=teacher,
        loss=loss,
        best_top1=max(100.0 * best_acc, final_top1),
        final_top1=final_top1,
        best_epoch=best_epoch,
        name=name or run_dir.name,
        dataset=short_model_name((config.get("data") or {}).get("dataset")),
        student_key=student_key,
        teacher_top1=_teacher_top1(run_dir),
        teacher_origin=teacher_origin_kind(teacher_record),
        teacher_provenance=(teacher_record or {}).get("provenance"),
        recipe_file=config.get("recipe"),
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample standard deviation across seeds (n - 1); one seed has no spread to report, so 0.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _joined(values: list[str | None]) -> str | None:
    # One value for the group, or each distinct one when its seeds disagree (a group should not mix teachers).
    distinct = sorted({v for v in values if v is not None})
    return " / ".join(distinct) if distinct else None


def summarise(runs: list[RunResult], recipes_dir: str | Path | None = None) -> list[GroupSummary]:
    """Group `runs` by recipe (else student/teacher/loss), sorted by group name, with the published numbers, the CE
    baseline of the same student and dataset (`None` for the CE groups themselves) and the teacher's top-1."""
    recipes_root = Path(recipes_dir) if recipes_dir is not None else None
    by_data: dict[tuple[str, str | None], list[RunResult]] = {}
    baselines: dict[tuple[str | None, str | None], list[float]] = {}
    for run in runs:
        by_data.setdefault((run.group, run.dataset), []).append(run)
        if run.loss == "ce":
            baselines.setdefault((run.student_key, run.dataset), []).append(run.best_top1)
    # Runs of one group on different datasets are not seeds of one result: such groups are named with the dataset.
    shared = {group for group, _ in by_data if sum(g == group for g, _ in by_data) > 1}
    groups = {(f"{g} on {d}" if g in shared else g): members for (g, d), members in by_data.items()}
    summaries = []
    for name in sorted(groups):
        members = groups[name]
        first = members[0]
        label = recipe_label(first.recipe) if first.recipe else first.group
        best_mean, best_std = _mean_std([r.best_top1 for r in members])
        final_mean, final_std = _mean_std([r.final_top1 for r in members])
        published = None
        if first.recipe is not None:
            located = _locate_recipe(first, recipes_root)
            published = read_published_top1(located) if located is not None else None
        teacher_runs = [r.teacher_top1 for r in members if r.teacher_top1 is not None]
        baseline = baselines.get((first.student_key, first.dataset), []) if first.loss != "ce" else []
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
                label=label if name == first.group else f"{label} on {first.dataset}",
                student=first.student,
                dataset=first.dataset,
                teacher=_joined([r.teacher for r in members]),
                teacher_top1=statistics.fmean(teacher_runs) if teacher_runs else None,
                teacher_origin=_joined([r.teacher_origin for r in members]),
                teacher_provenance=_joined([r.teacher_provenance for r in members]),
                baseline_top1=statistics.fmean(baseline) if baseline else None,
                baseline_runs=len(baseline),
                student_key=first.student_key,
            )
        )
    return summaries


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(summaries: list[GroupSummary]) -> str:
    """A markdown table: one row per group."""
    lines = [
        "| run group (recipe) | loss | seeds | best-epoch top-1 | final top-1 | published | best − published "
        "| CE baseline | teacher | teacher top-1 | teacher origin |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|:--|--:|:--|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.label} | {s.loss or '—'} | {s.num_runs} | {s.best_mean:.2f} ± {s.best_std:.2f} "
            f"| {s.final_mean:.2f} ± {s.final_std:.2f} | {_fmt(s.published)} | {_fmt(s.diff, signed=True)} "
            f"| {_fmt(s.baseline_top1)} | {s.teacher or '—'} | {_fmt(s.teacher_top1)} | {s.teacher_origin or '—'} |"
        )
    return "\n".join(lines) + "\n"


def to_json(summaries: list[GroupSummary]) -> dict[str, Any]:
    """The summaries as a JSON-serialisable dict (top-1 in percent)."""
    groups = [{k: v for k, v in asdict(s).items() if k != "student_key"} for s in summaries]
    return {"metric": "top-1 accuracy (%)", "groups": groups}
