"""benchmarks/recipe_throughput.py builds a recipe's real step and projects its wall time consistently."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import recipe_throughput  # noqa: E402


def test_projection_follows_the_measured_rate_and_the_recipe(tmp_path, monkeypatch):
    """With a clock that times the distillation step at 0.5 s and the student's at 0.25 s for a batch of 64: 128 and
    256 images/s, and the recipe's 240 epochs of 50,000 images take 240 × 50,000 / 128 s = 26 h 2 min 30 s."""
    monkeypatch.chdir(REPO)  # recipes name their teacher folders relative to the repository root
    ticks = iter([0.0, 0.5, 10.0, 10.25])
    monkeypatch.setattr(recipe_throughput, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    recipe = "recipes/cifar100/kd/resnet20_from_resnet56.yaml"
    out = tmp_path / "throughput.json"
    result = recipe_throughput.main(["--config", recipe, "--steps", "1", "--warmup", "0", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["batch_size"] == 64 and result["image_size"] == 32 and result["epochs"] == 240
    assert result["train_size"] == 50_000
    assert result["distill_images_per_s"] == 128.0 and result["student_ce_images_per_s"] == 256.0
    assert result["distill_over_student_time"] == 2.0
    assert result["projected_hours"] == pytest.approx(26 + 2 / 60 + 30 / 3600)


def test_unknown_dataset_size_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (REPO / "recipes/cifar100/kd/resnet20_from_resnet56.yaml").read_text()
    recipe.write_text(text.replace("dataset: uoft-cs/cifar100", "dataset: cifar10"))
    with pytest.raises(SystemExit, match="--train-size"):
        recipe_throughput.main(["--config", str(recipe), "--steps", "1", "--warmup", "0"])


def test_projection_counts_the_copies_of_each_image(tmp_path, monkeypatch):
    """A Streamlined recipe's epoch shows each of the 50,000 images twice (weak and strong copies): twice the time of
    the same rate over one copy."""
    monkeypatch.chdir(REPO)
    ticks = iter([0.0, 0.5, 10.0, 10.25])
    monkeypatch.setattr(recipe_throughput, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    recipe = "recipes/cifar100/streamlined/kd/resnet20_from_resnet56.yaml"
    result = recipe_throughput.main(["--config", recipe, "--steps", "1", "--warmup", "0"])
    assert result["train_size"] == 50_000 and result["samples_per_epoch"] == 100_000
    assert result["projected_hours"] == pytest.approx(2 * (26 + 2 / 60 + 30 / 3600))
