"""hfkd.report on fake run folders: aggregation against an independent computation, markdown, JSON, PNG."""

import json
from pathlib import Path

import numpy as np
import pytest

from hfkd import report

RECIPE = "recipes/cifar100/dkd/resnet8x4_from_resnet32x4.yaml"
# seed -> per-epoch eval accuracies (fractions) and the final eval_results accuracy
SEEDS = {0: ([0.50, 0.7601, 0.7588], 0.7588), 1: ([0.55, 0.7580, 0.7622], 0.7622), 2: ([0.6, 0.7644, 0.7610], 0.7610)}


def make_run(folder: Path, accuracies: list[float], final: float, *, recipe: str | None, loss: str = "dkd") -> Path:
    folder.mkdir(parents=True)
    log = []
    for epoch, acc in enumerate(accuracies, start=1):
        log.append({"epoch": float(epoch), "loss": 1.0 / epoch, "step": 10 * epoch})
        log.append({"epoch": float(epoch), "eval_accuracy": acc, "eval_loss": 1.0, "step": 10 * epoch})
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 10 * len(accuracies)}))
    (folder / "eval_results.json").write_text(json.dumps({"epoch": float(len(accuracies)), "eval_accuracy": final}))
    config = {
        "distill_loss": loss,
        "distill_loss_kwargs": {},
        "teacher": {"name_or_path": "runs/cifar100/teachers/resnet32x4", "revision": "main"},
        "recipe": recipe,
        "data": {"dataset": "uoft-cs/cifar100"},
    }
    (folder / "distill_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({"architecture": "cifar_resnet8x4", "model_type": "timm_wrapper"}))
    return folder


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / RECIPE
    recipe.parent.mkdir(parents=True)
    recipe.write_text("# Paper: DKD\n# published_top1: 76.32\ndistill_loss: dkd\n")
    for seed, (accs, final) in SEEDS.items():
        make_run(tmp_path / "runs" / f"dkd-seed{seed}", accs, final, recipe=RECIPE)
    make_run(tmp_path / "runs" / "kd-adhoc", [0.70, 0.72], 0.71, recipe=None, loss="kd")
    unfinished = tmp_path / "runs" / "crashed"
    unfinished.mkdir()
    (unfinished / "trainer_state.json").write_text(json.dumps({"log_history": []}))
    return tmp_path


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
    kd = summaries["cifar_resnet8x4 <- runs/cifar100/teachers/resnet32x4 (kd)"]
    assert kd.num_runs == 1 and kd.best_mean == pytest.approx(72.0) and kd.best_std == 0.0
    assert kd.final_mean == pytest.approx(71.0) and kd.published is None and kd.diff is None
    assert {r.best_epoch for r in runs if r.recipe} == {2.0, 3.0}


def test_published_line_parsing(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# published_top1: null\nseed: 0\n")
    assert report.read_published_top1(recipe) is None
    recipe.write_text("# Paper: x\n#   published_top1:   72.05 \nseed: 0\n")
    assert report.read_published_top1(recipe) == 72.05
    assert report.read_published_top1(tmp_path / "missing.yaml") is None


def test_cli_writes_markdown_json_and_png(workspace, capsys):
    code = report.main(["runs", "--json", "out.json", "--markdown", "out.md", "--png", "out.png"])
    assert code == 0
    markdown = (workspace / "out.md").read_text()
    assert capsys.readouterr().out == markdown
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| run group (recipe) |") and len(lines) == 4
    best = np.array([100 * max(accs) for accs, _ in SEEDS.values()])
    final = np.array([100 * f for _, f in SEEDS.values()])
    row = next(line for line in lines if RECIPE in line)
    assert (
        f"| dkd | 3 | {best.mean():.2f} ± {best.std(ddof=1):.2f} | {final.mean():.2f} ± {final.std(ddof=1):.2f}" in row
    )
    assert f"| 76.32 | {best.mean() - 76.32:+.2f} |" in row
    assert "| — | — |" in next(line for line in lines if "(kd)" in line)
    data = json.loads((workspace / "out.json").read_text())
    groups = {g["group"]: g for g in data["groups"]}
    assert groups[RECIPE]["num_runs"] == 3 and groups[RECIPE]["published"] == 76.32
    assert groups[RECIPE]["best_mean"] == pytest.approx(best.mean())
    assert len(groups[RECIPE]["runs"]) == 3
    assert (workspace / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipes_folder_locates_a_moved_recipe(workspace):
    moved = workspace / "elsewhere" / "recipes"
    moved.parent.mkdir()
    (workspace / "recipes").rename(moved)
    runs = [report.read_run(d) for d in report.find_run_dirs([workspace / "runs"])]
    assert {s.group: s.published for s in report.summarise(runs)}[RECIPE] is None
    assert {s.group: s.published for s in report.summarise(runs, recipes_dir=moved)}[RECIPE] == 76.32


def test_no_finished_runs_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--json", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert "No finished runs" in err and "eval_results.json" in err
    assert not (tmp_path / "out.json").exists()
