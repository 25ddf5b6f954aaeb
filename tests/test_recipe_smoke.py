"""Every recipe's whole path in smoke mode: 2 steps on synthetic data of its shape and class count, offline.

`make test` runs the first recipe of each folder (one per dataset and method: today every loss and task
the recipes use); the others are marked slow and run under `make test-all`. The COCO detection recipes (ResNeXt-101
teachers at 64 pixels are minutes on two cores) are all slow; tests/detection/test_recipes.py also runs them on the
demo scenes."""

import json
import sys
from pathlib import Path

import pytest

from hfkd.results.recipes_index import recipe_task

from .testing_utils import slow

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import run_image_distill  # noqa: E402

RECIPES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "recipes").rglob("*.yaml"))
DETECTION = {r for r in RECIPES if recipe_task((REPO / r).read_text(encoding="utf-8")) == "object-detection"}
FIRST_OF_EACH_FOLDER = {min(r for r in RECIPES if Path(r).parent == Path(recipe).parent) for recipe in RECIPES}
QUICK = FIRST_OF_EACH_FOLDER - DETECTION


@pytest.mark.parametrize("recipe", [r if r in QUICK else pytest.param(r, marks=slow) for r in RECIPES])
def test_recipe_runs_two_steps_in_smoke_mode(recipe, tmp_path):
    out = tmp_path / "run"
    metrics = run_image_distill.main(["--config", str(REPO / recipe), "--output_dir", str(out), "--smoke"])
    distill = json.loads((out / "distill_config.json").read_text())
    headline = {"image-classification": "eval_accuracy", "semantic-segmentation": "eval_mean_iou",
                "object-detection": "eval_map"}[distill["task"]]  # fmt: skip
    assert 0.0 <= metrics[headline] <= 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert distill["recipe"] == recipe  # its place under recipes/, no local path
    assert distill["data"]["source"].startswith("synthetic smoke data")
