"""Gather finished distillation runs into a results table next to the published numbers.

    python -m hfkd.report runs/ [--json out.json] [--markdown out.md] [--png out.png] [--recipes recipes/]

A finished run is a folder holding `distill_config.json`, `trainer_state.json` and `eval_results.json` (what
`examples/run_image_distill.py` writes at the end). Runs are grouped by the recipe they were launched with (else by
student, teacher and loss), so the seeds of one recipe form one row. Each row gives the mean ± std over seeds of
the best-epoch top-1 (the maximum `eval_accuracy` over the evaluations in `log_history`, which is what the papers
report) and of the final top-1 (`eval_results.json`), next to the published top-1 read from the recipe's
`# published_top1: <number>` header line, and the difference best − published.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

RUN_FILES = ("distill_config.json", "trainer_state.json", "eval_results.json")
PUBLISHED_LINE = re.compile(r"^#\s*published_top1:\s*(\S+)\s*$", re.MULTILINE)


@dataclass
class RunResult:
    """One finished run: where it is, what it distilled, and its top-1 in percent."""

    path: str
    group: str
    recipe: str | None
    student: str | None
    teacher: str | None
    loss: str | None
    best_top1: float
    final_top1: float
    best_epoch: float | None


@dataclass
class GroupSummary:
    """The runs of one recipe (or student/teacher/loss triple) across seeds."""

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
    # A recipe given as an absolute path or from another folder still groups with its relative spelling.
    return path[path.rfind("recipes/") :] if "recipes/" in path else path.removeprefix("./")


def _locate_recipe(recipe: str, run_dir: Path, recipes_dir: Path | None) -> Path | None:
    candidates = [Path(recipe), run_dir / recipe]
    if recipes_dir is not None:
        candidates.append(recipes_dir / recipe.removeprefix("recipes/"))
        candidates.append(recipes_dir.parent / recipe)
    return next((c for c in candidates if c.is_file()), None)


def _student_name(run_dir: Path) -> str | None:
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        return None
    config = _read_json(config_file)
    return config.get("architecture") or config.get("_name_or_path") or (config.get("architectures") or [None])[0]


def read_run(run_dir: str | Path) -> RunResult:
    """Read one finished run folder into a [`RunResult`] (top-1 in percent)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "distill_config.json")
    state = _read_json(run_dir / "trainer_state.json")
    final = _read_json(run_dir / "eval_results.json")
    if "eval_accuracy" not in final:
        raise ValueError(f"{run_dir / 'eval_results.json'} has no eval_accuracy; was the run evaluated?")
    final_top1 = 100.0 * float(final["eval_accuracy"])
    evals = [(float(e["eval_accuracy"]), e.get("epoch")) for e in state.get("log_history", []) if "eval_accuracy" in e]
    best_acc, best_epoch = max(evals, key=lambda pair: pair[0]) if evals else (float(final["eval_accuracy"]), None)
    teacher = (config.get("teacher") or {}).get("name_or_path")
    student, loss = _student_name(run_dir), config.get("distill_loss")
    recipe = _normalise_recipe(config.get("recipe"))
    group = recipe or (f"{student} <- {teacher} ({loss})" if teacher else f"{student} ({loss}, no teacher)")
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
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample standard deviation across seeds (n - 1); one seed has no spread to report, so 0.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[RunResult], recipes_dir: str | Path | None = None) -> list[GroupSummary]:
    """Group `runs` by recipe (else student/teacher/loss), sorted by group name, with the published numbers."""
    recipes_root = Path(recipes_dir) if recipes_dir is not None else None
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    summaries = []
    for name in sorted(groups):
        members = groups[name]
        best_mean, best_std = _mean_std([r.best_top1 for r in members])
        final_mean, final_std = _mean_std([r.final_top1 for r in members])
        recipe = members[0].recipe
        published = None
        if recipe is not None:
            located = _locate_recipe(recipe, Path(members[0].path), recipes_root)
            published = read_published_top1(located) if located is not None else None
        summaries.append(
            GroupSummary(
                group=name,
                recipe=recipe,
                loss=members[0].loss,
                num_runs=len(members),
                best_mean=best_mean,
                best_std=best_std,
                final_mean=final_mean,
                final_std=final_std,
                published=published,
                diff=None if published is None else best_mean - published,
                runs=[r.path for r in members],
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
        "| run group (recipe) | loss | seeds | best-epoch top-1 | final top-1 | published | best − published |",
        "|:--|:--|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.group} | {s.loss or '—'} | {s.num_runs} | {s.best_mean:.2f} ± {s.best_std:.2f} "
            f"| {s.final_mean:.2f} ± {s.final_std:.2f} | {_fmt(s.published)} | {_fmt(s.diff, signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def to_json(summaries: list[GroupSummary]) -> dict[str, Any]:
    """The summaries as a JSON-serialisable dict (top-1 in percent)."""
    return {"metric": "top-1 accuracy (%)", "groups": [asdict(s) for s in summaries]}


def save_png(summaries: list[GroupSummary], path: str | Path) -> None:
    """A horizontal bar chart of best-epoch top-1 (mean ± std) per group, with the published number as a mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.group for s in summaries]
    positions = list(range(len(summaries)))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(summaries) + 1.5))
    ax.barh(
        positions,
        [s.best_mean for s in summaries],
        xerr=[s.best_std for s in summaries],
        color="#4c72b0",
        label="measured (best epoch)",
    )
    published = [(i, s.published) for i, s in enumerate(summaries) if s.published is not None]
    if published:
        ax.scatter(
            [p for _, p in published],
            [i for i, _ in published],
            marker="|",
            s=300,
            color="#c44e52",
            zorder=3,
            label="published",
        )
    values = [s.best_mean for s in summaries] + [p for _, p in published]
    ax.set_xlim(max(0.0, min(values) - 5), min(100.0, max(values) + 3))
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("top-1 accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfkd.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="Run folders, or folders searched recursively for runs.")
    parser.add_argument("--json", help="Write the summary as JSON to this file.")
    parser.add_argument("--markdown", help="Write the markdown table to this file.")
    parser.add_argument("--png", help="Write a bar chart (measured vs published) to this file.")
    parser.add_argument("--recipes", help="Recipes folder, to find a run's recipe when its path moved.")
    args = parser.parse_args(argv)

    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        sys.stderr.write(
            f"No finished runs under {', '.join(args.paths)}: a finished run folder holds {', '.join(RUN_FILES)} "
            "(examples/run_image_distill.py writes them when training and evaluation end).\n"
        )
        return 1
    summaries = summarise([read_run(d) for d in run_dirs], recipes_dir=args.recipes)
    markdown = to_markdown(summaries)
    sys.stdout.write(markdown)
    if args.markdown:
        Path(args.markdown).write_text(markdown, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(summaries), indent=2) + "\n", encoding="utf-8")
    if args.png:
        save_png(summaries, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
