"""hfkd.report on run folders built like `examples/run_image_distill.py` writes them: aggregation against an
independent computation, the teacher's and the CE baseline's numbers, markdown, JSON and the chart."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hfkd.commands import report as report_command
from hfkd.results import plot as report_plot
from hfkd.results import runs as report

RECIPE = "recipes/cifar100/dkd/resnet8x4_from_resnet32x4.yaml"
KD_RECIPE = "recipes/cifar100/kd/resnet8x4_from_resnet32x4.yaml"
RELEASED = "released teacher (cifar_teachers.tar resnet32x4)"
RETRAINED = "trained with hfkd (recipe recipes/cifar100/teachers/resnet32x4.yaml), not a released checkpoint"
# seed -> per-epoch eval accuracies (fractions) and the final eval_results accuracy
SEEDS = {0: ([0.50, 0.7601, 0.7588], 0.7588), 1: ([0.55, 0.7580, 0.7622], 0.7622), 2: ([0.6, 0.7644, 0.7610], 0.7610)}
TEACHER_SEEDS = [0.7942, 0.7940, 0.7938]  # the teacher's own top-1, evaluated by each DKD run
CE_BEST = [0.7251, 0.7268]  # best epochs of the CE baseline's two seeds


def make_run(
    folder: Path,
    accuracies: list[float],
    final: float,
    *,
    recipe: str | None,
    loss: str = "dkd",
    teacher: str | None = "resnet32x4",
    local: bool | None = True,
    provenance: str | None = None,
    teacher_accuracy: float | None = None,
    architecture: str = "cifar_resnet8x4",
    dataset: str = "uoft-cs/cifar100",
) -> Path:
    """A finished run folder with the files `examples/run_image_distill.py` writes (no teacher for `loss="ce"`)."""
    folder.mkdir(parents=True)
    log = []
    for epoch, acc in enumerate(accuracies, start=1):
        log.append({"epoch": float(epoch), "loss": 1.0 / epoch, "step": 10 * epoch})
        log.append({"epoch": float(epoch), "eval_accuracy": acc, "eval_loss": 1.0, "step": 10 * epoch})
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 10 * len(accuracies)}))
    results = {"epoch": float(len(accuracies)), "eval_accuracy": final}
    (folder / "eval_results.json").write_text(json.dumps(results))
    if teacher_accuracy is not None:
        teacher_results = {"teacher_eval_accuracy": teacher_accuracy, "teacher_eval_top5_accuracy": 0.95}
        (folder / "teacher_eval_results.json").write_text(json.dumps(teacher_results))
        results = {**results, **teacher_results}
    (folder / "all_results.json").write_text(json.dumps(results))
    record = {"name_or_path": teacher, "local": local, "revision": None, "provenance": provenance, "num_labels": 100}
    config = {
        "distill_loss": loss,
        "distill_loss_kwargs": {},
        "teacher": None if loss == "ce" else record,
        "recipe": recipe,
        "data": {"dataset": dataset, "source": dataset, "train_images": 50000},
    }
    (folder / "distill_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"architecture": architecture, "model_type": "timm_wrapper"}))
    return folder


def write_recipe(root: Path, recipe: str, published: float) -> None:
    (root / recipe).parent.mkdir(parents=True, exist_ok=True)
    (root / recipe).write_text(f"# Paper: x\n# published_top1: {published}\ndistill_loss: x\n")


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """Three DKD seeds (released teacher, evaluated), one KD run without a recipe, a crashed run."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path, RECIPE, 76.32)
    for (seed, (accs, final)), teacher_acc in zip(SEEDS.items(), TEACHER_SEEDS):
        folder = tmp_path / "runs" / f"dkd-seed{seed}"
        make_run(folder, accs, final, recipe=RECIPE, provenance=RELEASED, teacher_accuracy=teacher_acc)
    make_run(tmp_path / "runs" / "kd-adhoc", [0.70, 0.72], 0.71, recipe=None, loss="kd")
    unfinished = tmp_path / "runs" / "crashed"
    unfinished.mkdir()
    (unfinished / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    return tmp_path


@pytest.fixture
def with_baselines(workspace) -> Path:
    """`workspace` plus a two-seed CE baseline of the same student, and CE runs that are not its baseline."""
    for seed, best in enumerate(CE_BEST):
        make_run(workspace / "runs" / f"ce-seed{seed}", [0.5, best], best - 0.001, recipe=None, loss="ce")
    make_run(workspace / "runs" / "ce-other-student", [0.60], 0.60, recipe=None, loss="ce", architecture="resnet20")
    make_run(workspace / "runs" / "ce-other-data", [0.90], 0.90, recipe=None, loss="ce", dataset="cifar10")
    return workspace


def summaries_of(root: Path) -> dict[str, report.GroupSummary]:
    runs = [report.read_run(d) for d in report.find_run_dirs([root / "runs"])]
    return {s.group: s for s in report.summarise(runs)}


def test_aggregation_matches_an_independent_computation(workspace):
    runs = [report.read_run(d) for d in report.find_run_dirs([workspace / "runs"])]
    assert len(runs) == 4  # the crashed folder is not a finished run
    summaries = {s.group: s for s in report.summarise(runs)}
    dkd = summaries[RECIPE]
    best = np.array([100 * max(accs) for accs, _ in SEEDS.values()])
    final = np.array([100 * f for _, f in SEEDS.values()])
    assert dkd.num_runs == 3
    assert dkd.best_mean == pytest.approx(best.mean())
    assert dkd.best_std == pytest.approx(best.std(ddof=1))
    assert dkd.final_mean == pytest.approx(final.mean())
    assert dkd.final_std == pytest.approx(final.std(ddof=1))
    assert dkd.published == 76.32
    assert dkd.diff == pytest.approx(best.mean() - 76.32)
    assert dkd.label == "cifar100/dkd/resnet8x4_from_resnet32x4"
    kd = summaries["cifar_resnet8x4 ← resnet32x4 (kd)"]
    assert kd.label == kd.group
    assert kd.num_runs == 1 and kd.best_mean == pytest.approx(72.0) and kd.best_std == 0.0
    assert kd.final_mean == pytest.approx(71.0) and kd.published is None and kd.diff is None
    assert {r.best_epoch for r in runs if r.recipe} == {2.0, 3.0}


def test_teacher_and_ce_baseline_numbers(with_baselines):
    summaries = summaries_of(with_baselines)
    dkd, kd = summaries[RECIPE], summaries["cifar_resnet8x4 ← resnet32x4 (kd)"]
    # The teacher's own top-1 (teacher_eval_results.json), not the student's: mean over the runs that evaluated it.
    assert dkd.teacher_top1 == pytest.approx(100 * np.mean(TEACHER_SEEDS))
    assert dkd.teacher == "resnet32x4" and dkd.teacher_origin == "released" and dkd.teacher_provenance == RELEASED
    assert kd.teacher_top1 is None and kd.teacher_origin is None
    # The baseline is the CE runs' best epochs for this student on this dataset only.
    assert dkd.baseline_top1 == pytest.approx(100 * np.mean(CE_BEST)) and dkd.baseline_runs == 2
    assert kd.baseline_top1 == pytest.approx(100 * np.mean(CE_BEST))
    ce = summaries["cifar_resnet8x4 (ce, no teacher) on uoft-cs/cifar100"]
    assert ce.num_runs == 2 and ce.best_mean == pytest.approx(100 * np.mean(CE_BEST))
    assert ce.baseline_top1 is None and ce.teacher is None  # a CE group is the baseline, not compared with one
    # Same student and loss on another dataset: another group (named with its dataset), not a fourth seed.
    assert summaries["cifar_resnet8x4 (ce, no teacher) on cifar10"].best_mean == pytest.approx(90.0)
    other = summaries["resnet20 (ce, no teacher)"]
    assert other.best_mean == pytest.approx(60.0) and other.baseline_top1 is None


def test_teacher_origin_from_the_provenance(tmp_path):
    make_run(tmp_path / "runs" / "a", [0.7], 0.7, recipe=None, loss="kd", provenance=RETRAINED)
    make_run(tmp_path / "runs" / "b", [0.7], 0.7, recipe=None, loss="dkd", teacher="timm/resnet32x4", local=False)
    make_run(tmp_path / "runs" / "c", [0.7], 0.7, recipe=None, loss="dist", local=True)
    origins = {s.loss: (s.teacher_origin, s.teacher_provenance) for s in summaries_of(tmp_path).values()}
    assert origins == {"kd": ("hfkd-trained", RETRAINED), "dkd": ("Hub", None), "dist": (None, None)}


def test_published_line_parsing(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# published_top1: null\nseed: 0\n")
    assert report.read_published_top1(recipe) is None
    recipe.write_text("# Paper: x\n#   published_top1:   72.05 \nseed: 0\n")
    assert report.read_published_top1(recipe) == 72.05
    assert report.read_published_top1(tmp_path / "missing.yaml") is None


def test_cli_writes_markdown_json_and_png(with_baselines, capsys):
    code = report_command.main(["runs", "--json", "out.json", "--markdown", "out.md", "--png", "out.png"])
    assert code == 0
    markdown = (with_baselines / "out.md").read_text()
    assert capsys.readouterr().out == markdown
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| run group (recipe) |") and "| teacher top-1 | teacher origin |" in lines[0]
    assert len(lines) == 2 + 5
    best = np.array([100 * max(accs) for accs, _ in SEEDS.values()])
    final = np.array([100 * f for _, f in SEEDS.values()])
    row = next(line for line in lines if "| cifar100/dkd/resnet8x4_from_resnet32x4 |" in line)
    assert (
        f"| dkd | 3 | {best.mean():.2f} ± {best.std(ddof=1):.2f} | {final.mean():.2f} ± {final.std(ddof=1):.2f}" in row
    )
    teacher = 100 * np.mean(TEACHER_SEEDS)
    assert f"| 76.32 | {best.mean() - 76.32:+.2f} | {100 * np.mean(CE_BEST):.2f} | resnet32x4 | {teacher:.2f} |" in row
    assert row.endswith("| released |")
    baseline = f"{100 * np.mean(CE_BEST):.2f}"
    assert f"| — | — | {baseline} | resnet32x4 | — | — |" in next(line for line in lines if "(kd)" in line)
    data = json.loads((with_baselines / "out.json").read_text())
    groups = {g["group"]: g for g in data["groups"]}
    assert groups[RECIPE]["num_runs"] == 3 and groups[RECIPE]["published"] == 76.32
    assert groups[RECIPE]["best_mean"] == pytest.approx(best.mean())
    assert groups[RECIPE]["teacher_top1"] == pytest.approx(teacher)
    assert groups[RECIPE]["teacher_origin"] == "released" and groups[RECIPE]["teacher_provenance"] == RELEASED
    assert groups[RECIPE]["baseline_top1"] == pytest.approx(100 * np.mean(CE_BEST))
    assert groups[RECIPE]["runs"] == ["runs/dkd-seed0", "runs/dkd-seed1", "runs/dkd-seed2"]
    assert (with_baselines / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_local_path_reaches_the_table_json_or_chart(tmp_path, monkeypatch):
    """Runs under a temporary folder, launched from elsewhere, with absolute recipe and (older runs') teacher paths."""
    write_recipe(tmp_path, RECIPE, 76.32)
    runs = tmp_path / "runs"
    make_run(runs / "a", [0.76], 0.76, recipe=str(tmp_path / RECIPE), provenance=RELEASED, teacher_accuracy=0.79)
    make_run(runs / "b", [0.74], 0.74, recipe=str(tmp_path / "mine.yaml"), teacher=str(tmp_path / "t" / "r32x4"))
    make_run(runs / "c", [0.73], 0.73, recipe=None, loss="kd", teacher=str(tmp_path / "t" / "r32x4"), local=None)
    make_run(runs / "d", [0.72], 0.72, recipe=None, loss="ce")
    monkeypatch.chdir(tmp_path.parent)
    out = tmp_path / "out"
    argv = [str(runs), "--json", f"{out}.json", "--markdown", f"{out}.md", "--png", f"{out}.png"]
    assert report_command.main(argv) == 0
    tmp = str(tmp_path.resolve())
    texts = {"markdown": Path(f"{out}.md").read_text(), "json": Path(f"{out}.json").read_text()}
    texts["png"] = Path(f"{out}.png").read_bytes().decode("latin-1")  # its text chunks (metadata) are plain
    summaries = report.summarise(
        [report.read_run(d, report.run_name(d, [runs])) for d in report.find_run_dirs([runs])]
    )
    figure = report_plot.build_figure(summaries)
    texts["chart"] = "\n".join(t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")))
    for what, text in texts.items():
        assert tmp not in text and str(tmp_path) not in text, what
    labels = {s.label for s in summaries}
    assert labels == {"cifar100/dkd/resnet8x4_from_resnet32x4", "mine", "cifar_resnet8x4 ← r32x4 (kd)",
                      "cifar_resnet8x4 (ce, no teacher)"}  # fmt: skip
    assert {label for label in labels if label in texts["chart"]} == labels
    assert {g["label"]: g["runs"] for g in json.loads(texts["json"])["groups"]}["mine"] == ["runs/b"]
    assert {s.published for s in summaries} == {76.32, None}  # the absolute recipe path still found its header


def chart_axis(summaries: list[report.GroupSummary]):
    figure = report_plot.build_figure(summaries)
    ax = figure.axes[0]
    return ax, [t.get_text() for t in ax.get_xticklabels()]


def test_chart_axis_starts_at_0_or_is_marked_broken(with_baselines):
    # CIFAR-100 numbers within a few points of each other: a broken axis, drawn as such and said in the label.
    same_student = [
        s
        for s in summaries_of(with_baselines).values()
        if s.student == "cifar_resnet8x4" and s.dataset == "uoft-cs/cifar100"
    ]
    ax, ticks = chart_axis(same_student)
    assert ax.get_xlim()[0] == 0 and ticks[0] == "0"
    assert ax.get_xscale() == "function" and "axis broken" in ax.get_xlabel() and "bars start at 0" in ax.get_xlabel()
    left, right = ax.get_xlim()
    assert right >= 100 * max(TEACHER_SEEDS)  # the teacher's line is inside the chart
    # Widely spread numbers (9 % beside 15 %): a plain axis from 0, nothing broken.
    spread = [
        report.GroupSummary(group=g, recipe=None, loss="kd", num_runs=1, best_mean=m, best_std=0.0, final_mean=m,
                            final_std=0.0, published=None, diff=None, label=g)
        for g, m in (("a", 9.0), ("b", 15.0))
    ]  # fmt: skip
    ax, ticks = chart_axis(spread)
    assert ax.get_xlim()[0] == 0 and ticks[0] == "0"
    assert ax.get_xscale() == "linear" and "broken" not in ax.get_xlabel()


def test_chart_prints_values_and_reference_numbers(with_baselines):
    summaries = list(summaries_of(with_baselines).values())
    figure = report_plot.build_figure(summaries)
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    dkd = next(s for s in summaries if s.group == RECIPE)
    assert f"{dkd.best_mean:.2f} ± {dkd.best_std:.2f} (n=3)" in texts and "paper 76.32" in texts
    header = next(t for t in texts if t.startswith("cifar_resnet8x4 on uoft-cs/cifar100"))
    assert f"CE baseline {100 * np.mean(CE_BEST):.2f}" in header
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["student, distilled", "student, CE only", "CE baseline of the same student",
                      "teacher's own top-1", "published (paper)"]  # fmt: skip


def test_png_without_matplotlib_says_how_to_install_it_before_reading_runs(workspace, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert report_command.main(["runs", "--json", "out.json", "--png", "out.png"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "matplotlib" in captured.err and 'pip install "hfkd[plots]"' in captured.err
    assert not (workspace / "out.json").exists() and not (workspace / "out.png").exists()
    (workspace / "empty").mkdir()
    assert report_command.main(["empty", "--png", "out.png"]) == 2  # said before any run is looked for
    assert "No finished runs" not in capsys.readouterr().err
    assert report_command.main(["runs", "--json", "out.json"]) == 0  # the table needs no matplotlib


def test_recipes_folder_locates_a_moved_recipe(workspace):
    moved = workspace / "elsewhere" / "recipes"
    moved.parent.mkdir()
    (workspace / "recipes").rename(moved)
    runs = [report.read_run(d) for d in report.find_run_dirs([workspace / "runs"])]
    assert {s.group: s.published for s in report.summarise(runs)}[RECIPE] is None
    assert {s.group: s.published for s in report.summarise(runs, recipes_dir=moved)}[RECIPE] == 76.32


def test_no_finished_runs_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_command.main([str(tmp_path / "empty"), "--json", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert "No finished runs" in err and "eval_results.json" in err
    assert not (tmp_path / "out.json").exists()


# ------------------------------------------------------------------------------------------- semantic segmentation

SEG_RECIPE = "recipes/cityscapes/cwd/deeplabv3_resnet18_from_resnet101.yaml"
SMP_STUDENT = {"model_type": "hfkd_smp", "architecture": "DeepLabV3", "encoder_name": "tu-resnet18d",
               "architectures": ["SmpForSemanticSegmentation"]}  # fmt: skip
# seed -> per-evaluation mean IoU (fractions) and the final eval_results mean IoU
SEG_SEEDS = {0: ([0.61, 0.7402, 0.7377], 0.7377), 1: ([0.60, 0.7350, 0.7421], 0.7421)}
SEG_TEACHER = [0.7781, 0.7779]


def make_segmentation_run(
    folder: Path,
    mious: list[float],
    final: float,
    *,
    recipe: str | None,
    loss: str = "cwd",
    teacher: str | None = "deeplabv3-r101",
    teacher_miou: float | None = None,
    student: dict | None = None,
    dataset: str = "cityscapes",
) -> Path:
    """A finished segmentation run folder: `distill_config.json` naming its task, mean IoU in `log_history`, the
    final evaluation and the teacher's, beside other metrics that must not be read as the headline."""
    folder.mkdir(parents=True)
    log = []
    for epoch, miou in enumerate(mious, start=1):
        log.append({"epoch": float(epoch), "loss": 1.0 / epoch, "step": 100 * epoch})
        others = {"eval_mean_accuracy": miou + 0.05, "eval_overall_accuracy": 0.95, "eval_iou_road": 0.97}
        log.append({"epoch": float(epoch), "eval_mean_iou": miou, **others, "eval_loss": 0.3, "step": 100 * epoch})
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    results = {"epoch": float(len(mious)), "eval_mean_iou": final, "eval_mean_accuracy": 0.99,
               "eval_overall_accuracy": 0.99}  # fmt: skip
    (folder / "eval_results.json").write_text(json.dumps(results))
    if teacher_miou is not None:
        teacher_results = {"teacher_eval_mean_iou": teacher_miou, "teacher_eval_overall_accuracy": 0.99}
        (folder / "teacher_eval_results.json").write_text(json.dumps(teacher_results))
        results = {**results, **teacher_results}
    (folder / "all_results.json").write_text(json.dumps(results))
    config = {
        "task": "semantic-segmentation",
        "distill_loss": loss,
        "distill_loss_kwargs": {},
        "teacher": None if loss == "ce" else {"name_or_path": teacher, "local": True, "provenance": None},
        "recipe": recipe,
        "data": {"dataset": dataset, "crop_size": [512, 1024]},
    }
    (folder / "distill_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps(student or SMP_STUDENT))
    return folder


def write_segmentation_recipe(root: Path, recipe: str, published: float) -> None:
    (root / recipe).parent.mkdir(parents=True, exist_ok=True)
    text = f"# Paper: x\n# Reproduces: a cell.\n# published_miou: {published}\ndistill_task: semantic-segmentation\n"
    (root / recipe).write_text(text)


@pytest.fixture
def segmentation_runs(tmp_path, monkeypatch) -> Path:
    """Two seeds of a CWD recipe (teacher evaluated) and a two-seed CE baseline of the same student."""
    monkeypatch.chdir(tmp_path)
    write_segmentation_recipe(tmp_path, SEG_RECIPE, 75.90)
    for (seed, (mious, final)), teacher in zip(SEG_SEEDS.items(), SEG_TEACHER):
        make_segmentation_run(tmp_path / "runs" / f"cwd-seed{seed}", mious, final, recipe=SEG_RECIPE,
                              teacher_miou=teacher)  # fmt: skip
    for seed, best in enumerate((0.7012, 0.7030)):
        make_segmentation_run(tmp_path / "runs" / f"ce-seed{seed}", [0.5, best], best, recipe=None, loss="ce")
    return tmp_path


def test_segmentation_report_gives_best_and_final_miou_next_to_the_published_one(segmentation_runs):
    assert report_command.main(["runs", "--json", "out.json", "--markdown", "out.md", "--png", "out.png"]) == 0
    best = np.array([100 * max(mious) for mious, _ in SEG_SEEDS.values()])
    final = np.array([100 * f for _, f in SEG_SEEDS.values()])
    baseline, teacher = 100 * np.mean([0.7012, 0.7030]), 100 * np.mean(SEG_TEACHER)

    lines = (segmentation_runs / "out.md").read_text().strip().splitlines()
    assert lines[0] == (
        "| run group (recipe) | loss | seeds | best-epoch mIoU | final mIoU | published | best − published "
        "| CE baseline | teacher | teacher mIoU | teacher origin |"
    )
    assert "top-1" not in "\n".join(lines) and len(lines) == 2 + 2
    row = next(line for line in lines if line.startswith("| cityscapes/cwd/deeplabv3_resnet18_from_resnet101 |"))
    assert (
        f"| cwd | 2 | {best.mean():.2f} ± {best.std(ddof=1):.2f} | {final.mean():.2f} ± {final.std(ddof=1):.2f} "
        f"| 75.90 | {best.mean() - 75.90:+.2f} | {baseline:.2f} | deeplabv3-r101 | {teacher:.2f} |"
    ) in row
    ce = next(line for line in lines if "(ce, no teacher)" in line)
    assert ce.startswith("| DeepLabV3 (tu-resnet18d) (ce, no teacher) | ce | 2 |")

    data = json.loads((segmentation_runs / "out.json").read_text())
    assert data["metric"] == "mean IoU (%)"
    group = {g["group"]: g for g in data["groups"]}[SEG_RECIPE]
    assert group["task"] == "semantic-segmentation" and group["metric"] == "mean IoU (%)"
    assert group["best_mean"] == pytest.approx(best.mean()) and group["final_mean"] == pytest.approx(final.mean())
    assert group["published"] == 75.90 and group["diff"] == pytest.approx(best.mean() - 75.90)
    assert group["teacher_miou"] == pytest.approx(teacher) and group["baseline_miou"] == pytest.approx(baseline)
    assert not any("top1" in key for key in group)
    assert (segmentation_runs / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summaries = report.summarise([report.read_run(d) for d in report.find_run_dirs(["runs"])])
    figure = report_plot.build_figure(summaries)
    assert figure.axes[0].get_xlabel().startswith("mean IoU (%), best epoch")
    assert "teacher's own mIoU" in [t.get_text() for t in figure.legends[0].get_texts()]
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    assert "paper 75.90" in texts and f"{best.mean():.2f} ± {best.std(ddof=1):.2f} (n=2)" in texts


def test_a_classification_run_without_a_task_reads_top1(tmp_path):
    """Runs written before `distill_config.json` recorded the task are image classification (`make_run` writes
    none); a segmentation run lacking its metric says which one it lacks."""
    run = report.read_run(make_run(tmp_path / "old", [0.5, 0.7], 0.69, recipe=None))
    assert run.task == "image-classification" and run.best_value == pytest.approx(70.0)
    folder = make_segmentation_run(tmp_path / "seg", [0.5], 0.5, recipe=None)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))
    with pytest.raises(ValueError, match="no eval_mean_iou"):
        report.read_run(folder)


def test_classification_and_segmentation_runs_are_never_grouped_together(tmp_path, monkeypatch):
    """Same student config, teacher, loss and dataset, different tasks: two groups, and each task's CE baseline."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    make_segmentation_run(runs / "seg-kd", [0.60, 0.72], 0.71, recipe=None, loss="kd", teacher="t")
    make_segmentation_run(runs / "seg-ce", [0.65], 0.65, recipe=None, loss="ce")
    for name, loss, accuracies in (("cls-kd", "kd", [0.80, 0.85]), ("cls-ce", "ce", [0.81])):
        make_run(runs / name, accuracies, accuracies[-1], recipe=None, loss=loss, teacher="t", dataset="cityscapes")
        (runs / name / "config.json").write_text(json.dumps(SMP_STUDENT))  # the same student_key as the seg runs
    summaries = {s.group: s for s in report.summarise([report.read_run(d) for d in report.find_run_dirs([runs])])}
    kd = "DeepLabV3 (tu-resnet18d) ← t (kd)"
    assert set(summaries) == {f"{kd} (image-classification)", f"{kd} (semantic-segmentation)",
                              "DeepLabV3 (tu-resnet18d) (ce, no teacher) (image-classification)",
                              "DeepLabV3 (tu-resnet18d) (ce, no teacher) (semantic-segmentation)"}  # fmt: skip
    seg, cls = summaries[f"{kd} (semantic-segmentation)"], summaries[f"{kd} (image-classification)"]
    assert seg.num_runs == cls.num_runs == 1
    assert seg.task == "semantic-segmentation" and seg.best_mean == pytest.approx(72.0)
    assert cls.task == "image-classification" and cls.best_mean == pytest.approx(85.0)
    assert seg.baseline_value == pytest.approx(65.0) and cls.baseline_value == pytest.approx(81.0)
    assert seg.label == f"{kd} (semantic-segmentation)"

    assert report_command.main(["runs", "--json", "out.json", "--markdown", "out.md", "--png", "out.png"]) == 0
    markdown = (tmp_path / "out.md").read_text()
    cls_table, seg_table = markdown.split("### semantic-segmentation (mIoU)\n")
    assert cls_table.startswith("### image-classification (top-1)\n\n| run group (recipe) |")
    assert "| best-epoch top-1 | final top-1 |" in cls_table and "mIoU" not in cls_table
    assert "| best-epoch mIoU | final mIoU |" in seg_table and "top-1" not in seg_table
    assert f"| {kd} (semantic-segmentation) | kd | 1 | 72.00 ± 0.00 | 71.00 ± 0.00 |" in seg_table
    assert f"| {kd} (image-classification) | kd | 1 | 85.00 ± 0.00 | 85.00 ± 0.00 |" in cls_table
    data = json.loads((tmp_path / "out.json").read_text())
    groups = {g["group"]: g for g in data["groups"]}
    assert groups[f"{kd} (semantic-segmentation)"]["baseline_miou"] == pytest.approx(65.0)
    assert groups[f"{kd} (image-classification)"]["baseline_top1"] == pytest.approx(81.0)
    assert groups[f"{kd} (image-classification)"]["metric"] == "top-1 accuracy (%)"
    figure = report_plot.build_figure(list(summaries.values()))
    assert figure.axes[0].get_xlabel().startswith("top-1 accuracy / mean IoU (%)")
    texts = [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text"))]
    assert "DeepLabV3 (tu-resnet18d) on cityscapes (mIoU): CE baseline 65.00" in texts
    assert "DeepLabV3 (tu-resnet18d) on cityscapes (top-1): CE baseline 81.00" in texts


def test_published_line_of_each_task(tmp_path):
    from hfkd.tasks.base import TASK_NAMES
    from hfkd.tasks.registry import get_task
    from hfkd.utils.errors import UnknownNameError

    assert set(report.HEADLINES) == set(TASK_NAMES)  # every task the report can name
    for task in TASK_NAMES:
        try:
            assert report.headline_metric(task) == get_task(task).metric
        except UnknownNameError:  # a task hfkd does not train yet
            pass
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# Paper: x\n# published_miou: 75.9\n#published_map:   40.1 \nseed: 0\n")
    assert report.read_published(recipe, "semantic-segmentation") == 75.9
    assert report.read_published(recipe, "object-detection") == 40.1
    assert report.read_published(recipe) is None and report.read_published_top1(recipe) is None
    with pytest.raises(ValueError, match="pose-estimation"):
        report.read_published(recipe, "pose-estimation")
