"""The segmentation recipes train as their references: the learning rate of every DIST Cityscapes step is DIST's
`adjust_lr` (hunto/DIST_KD segmentation/train_kd.py), and every recipe names its published number and task."""

from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from hfkd.commands.arguments import parse_args

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = sorted((REPO / "recipes").glob("cityscapes/**/*.yaml")) + sorted(
    (REPO / "recipes").glob("ade20k/**/*.yaml")
)


def _dist_lr(iteration: int, base: float = 0.02, end: float = 1e-4, total: int = 40_000) -> float:
    """DIST's adjust_lr: lr = end + (base - end) * (1 - it / total) ** 0.9, set before the step of iteration it."""
    return end + (base - end) * (1 - iteration / total) ** 0.9


@pytest.mark.parametrize(
    "recipe", [p for p in SEGMENTATION if "/dist/" in p.as_posix() and "cityscapes" in p.as_posix()]
)
def test_dist_cityscapes_lr_is_dists_step_for_step(recipe, tmp_path):
    *_, args, _ = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path)])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )  # fmt: skip
    worst = 0.0
    for iteration in range(args.max_steps):
        worst = max(worst, abs(optimizer.param_groups[0]["lr"] - _dist_lr(iteration)))
        optimizer.step()
        scheduler.step()
    assert args.max_steps == 40_000 and worst < 1e-12


@pytest.mark.parametrize("recipe", SEGMENTATION, ids=lambda p: p.stem)
def test_each_recipe_is_a_segmentation_run_with_its_published_miou(recipe, tmp_path):
    text = recipe.read_text()
    assert "# published_miou:" in text and "Known deviations" in text
    # --bf16 false: a recipe for GPUs parsed on this CPU
    args = parse_args(["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false"])[3]
    assert args.distill_task == "semantic-segmentation"
