"""Keep the recipe tables of `recipes/README.md` in step with the recipes and with finished runs.

The tables between the `<!-- recipes-index:start -->` and `<!-- recipes-index:end -->` markers are generated: one
row per recipe under the README's folder, with the cell it reproduces (its `# Reproduces:` header line), its
published number in its task's headline metric (`# published_top1:` for classification, `# published_miou:` for
segmentation, `# published_map:` for detection: `hfkd.results.runs.HEADLINES`) and the measured best-epoch number
(mean ± std over seeds, as `hfkd report` computes it) of the finished runs found under `--runs`. A recipe's task is
its `distill_task` key, else the task whose published line its header holds, else image classification; a table whose
recipes share one task names the metric in its columns (`published top-1`), a mixed one after each published number.
A recipe with no run keeps the measured number already in the README, so numbers measured on another machine are not
lost.
"""

from __future__ import annotations

import re
from pathlib import Path

from hfkd.results.runs import (
    CLASSIFICATION,
    HEADLINES,
    GroupSummary,
    find_run_dirs,
    headline,
    published_line,
    read_published,
    read_run,
    summarise,
)
from hfkd.utils.errors import UsageError

START = "<!-- recipes-index:start -->"


END = "<!-- recipes-index:end -->"


NO_RUN = "—"


# (section title, pattern over the recipe path relative to the recipes folder); the first match wins.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("CIFAR-100 teachers (cross-entropy; train these first)", r"cifar100/teachers/"),
    ("MDistiller CIFAR-100: KD and DKD over the 11 pairs of the DKD paper", r"cifar100/(kd|dkd)/"),
    ("DIST CIFAR-100 table", r"cifar100/dist/"),
    ("MDistiller CIFAR-100: the other methods on ResNet32x4 → ResNet8x4", r"cifar100/\w+/resnet8x4_from_resnet32x4"),
    ("Streamlined KD CIFAR-100 table (StreamLined README)", r"cifar100/streamlined/"),
    ("MDistiller ImageNet (DKD paper)", r"imagenet/(kd|dkd)/"),
    ("DIST ImageNet tables", r"imagenet/dist/"),
    ("DeiT ImageNet: distillation through attention from RegNetY-16GF (DeiT README)", r"imagenet/deit/"),
    ("Cityscapes teachers and baselines (cross-entropy; train the teachers first)", r"cityscapes/(teachers|ce)/"),
    ("Cityscapes semantic segmentation: DIST's table and mmrazor's CWD row", r"cityscapes/(dist|cwd)/"),
    ("ADE20K semantic segmentation (Hugging Face models; no published distillation number)", r"ade20k/"),
    ("COCO detection teachers (detector loss only; train these first)", r"coco/teachers/"),
    ("COCO detection, Hugging Face RT-DETR (no published distillation number)", r"coco/\w+/rtdetr"),
    ("COCO detection: DIST's table (MasKD's mmdet configs)", r"coco/dist/"),
    ("COCO detection: MDistiller's DKD rows (detectron2; published numbers unverified)", r"coco/dkd/"),
)


OTHER_SECTION = "Other recipes"


ROW = re.compile(r"^\| \[`(?P<recipe>[^`]+)`\]\([^)]*\) \|.*\| (?P<measured>[^|]*?) \|$")


def _header_line(text: str, key: str) -> str:
    match = re.search(rf"^#\s*{re.escape(key)}:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def recipe_task(text: str) -> str:
    """The task of a recipe's text: its `distill_task` key, else the task whose `# published_<key>:` line its header
    holds, else image classification."""
    match = re.search(r"^distill_task:\s*[\"']?([\w-]+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    return next((task for task in HEADLINES if published_line(task).search(text)), CLASSIFICATION)


def section_of(recipe: str) -> str:
    """The README section a recipe (path relative to the recipes folder) is listed under."""
    return next((title for title, pattern in SECTIONS if re.match(pattern, recipe)), OTHER_SECTION)


def measured_cell(summary: GroupSummary) -> str:
    seeds = f"{summary.num_runs} seed{'s' if summary.num_runs != 1 else ''}"
    return f"{summary.best_mean:.2f} ± {summary.best_std:.2f} ({seeds})"


def existing_measured(readme_text: str) -> dict[str, str]:
    """The measured cells already in the README's generated tables, by recipe path."""
    cells = {}
    for line in readme_text.splitlines():
        match = ROW.match(line)
        if match and match.group("measured") != NO_RUN:
            cells[match.group("recipe")] = match.group("measured")
    return cells


def render_index(recipes_dir: str | Path, measured: dict[str, str] | None = None) -> str:
    """Markdown tables of every recipe under `recipes_dir`, grouped into `SECTIONS`."""
    recipes_dir, measured = Path(recipes_dir), measured or {}
    grouped: dict[str, list[str]] = {}
    for path in sorted(recipes_dir.rglob("*.yaml")):
        recipe = path.relative_to(recipes_dir).as_posix()
        grouped.setdefault(section_of(recipe), []).append(recipe)
    blocks = []
    for title in [t for t, _ in SECTIONS] + [OTHER_SECTION]:
        if title not in grouped:
            continue
        texts = {recipe: (recipes_dir / recipe).read_text(encoding="utf-8") for recipe in grouped[title]}
        tasks = {recipe: recipe_task(text) for recipe, text in texts.items()}
        names = {task: headline(task).name for task in tasks.values()}
        # One task: the columns name its metric; several: each published number names its own.
        column = f" {next(iter(names.values()))}" if len(names) == 1 else ""
        rows = [
            f"### {title} ({len(grouped[title])})",
            "",
            f"| recipe | reproduces | published{column} | measured{column} (best epoch) |",
            "|:--|:--|--:|--:|",
        ]
        for recipe, text in texts.items():
            reproduces = _header_line(text, "Reproduces").rstrip(".").replace("|", "\\|")
            published = read_published(recipes_dir / recipe, tasks[recipe])
            metric = "" if column else f" {names[tasks[recipe]]}"
            shown = "see header" if published is None else f"{published:.2f}{metric}"
            rows.append(f"| [`{recipe}`]({recipe}) | {reproduces} | {shown} | {measured.get(recipe, NO_RUN)} |")
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def update_readme(readme: str | Path, run_paths: list[str | Path] = ()) -> str:
    """The README text with its generated tables rebuilt from the recipes and the runs under `run_paths`."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise UsageError(f"{readme} lacks the {START} ... {END} markers around its recipe tables; add them.")
    measured = existing_measured(text)
    run_dirs = find_run_dirs(list(run_paths)) if run_paths else []
    for summary in summarise([read_run(d) for d in run_dirs], recipes_dir=readme.parent):
        if summary.recipe and summary.recipe.startswith("recipes/"):
            measured[summary.recipe.removeprefix("recipes/")] = measured_cell(summary)
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n\n{render_index(readme.parent, measured)}\n{END}{tail}"
