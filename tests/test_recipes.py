"""Every recipe under recipes/: header, known keys, registered loss, binding kwargs, resolvable models."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from hfkd import DistillationTrainer
from hfkd.commands.arguments import build_parser
from hfkd.commands.parser import HfkdParser
from hfkd.losses import get_loss_class, resolve_loss_kwargs
from hfkd.models.loading import resolve_model_name
from hfkd.results.recipes_index import recipe_task
from hfkd.results.runs import headline, read_published_top1

from .testing_utils import tiny_resnet

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO / "recipes"
RECIPES = sorted(p.relative_to(REPO).as_posix() for p in RECIPES_DIR.rglob("*.yaml"))
LOCAL_TEACHER = re.compile(r"^runs/(?P<dataset>[a-z0-9]+)/teachers/(?P<name>[a-z0-9_]+)$")
# CLI flags that make any recipe parse on a CPU-only test machine.
CPU_FLAGS = ["--bf16", "false", "--use_cpu", "true", "--report_to", "none"]


def parser() -> HfkdParser:
    return build_parser()


def load(recipe: str) -> dict:
    return yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))


def parse_recipe(recipe: str, tmp_path: Path) -> tuple:
    """Parse through the script's parser, exactly as `--config` reads it."""
    return parser().parse(["--config", recipe, "--output_dir", str(tmp_path / "out"), *CPU_FLAGS])


def test_recipes_exist_in_the_expected_numbers():
    def count(pattern: str) -> int:
        return len([r for r in RECIPES if re.fullmatch(pattern, r)])

    assert count(r"recipes/cifar100/kd/[^/]+\.yaml") >= 11
    assert count(r"recipes/cifar100/dkd/[^/]+\.yaml") >= 11
    methods = {
        r.split("/")[2] for r in RECIPES if re.fullmatch(r"recipes/cifar100/\w+/resnet8x4_from_resnet32x4\.yaml", r)
    }
    expected = {"kd", "dkd", "fitnet", "at", "nst", "pkt", "kdsvd", "ofd", "rkd", "vid", "sp", "crd", "reviewkd"}
    assert expected <= methods
    assert count(r"recipes/cifar100/teachers/[^/]+\.yaml") == 6
    assert count(r"recipes/imagenet/(kd|dkd)/[^/]+\.yaml") == 4
    assert count(r"recipes/cifar100/dist/[^/]+\.yaml") == 6
    # DIST ImageNet: 2 baseline pairs, 6 more stronger-teacher rows, 4 ResNet-50-SB rows and 2 Swin-L rows...
    assert count(r"recipes/imagenet/dist/[^/]+\.yaml") == 14
    # ... and the KD (T=4) column of the stronger-teacher (7), ResNet-50-SB (4) and Swin-L (2) rows.
    assert count(r"recipes/imagenet/dist/kd/[^/]+\.yaml") == 13
    assert count(r"recipes/cifar100/streamlined/\w+/[^/]+\.yaml") >= 5 * 6
    # DeiT's distilled Ti, S and B from RegNetY-16GF.
    assert count(r"recipes/imagenet/deit/deit_(tiny|small|base)_distilled_from_regnety_160\.yaml") == 3


@pytest.mark.parametrize("recipe", RECIPES)
def test_header(recipe):
    text = (REPO / recipe).read_text(encoding="utf-8")
    header = text[: text.index("\n" + next(line for line in text.splitlines() if not line.startswith("#")))]
    assert text.startswith("# "), "a recipe starts with its comment block"
    # The published number is the task's headline: top-1 for classification, mIoU for segmentation, box mAP for
    # detection (`# Published mAP:` and `# published_map:`).
    metric, key = headline(recipe_task(text)).name, f"published_{headline(recipe_task(text)).key}"
    for marker in ("Paper:", "Reproduces:", f"Published {metric}:", "Known deviations:", "accelerate launch"):
        assert marker in header, f"{recipe}: header lacks {marker!r}"
    assert "examples/run_image_distill.py" in header or "-m hfkd distill" in header
    assert f"--config {recipe} --output_dir runs/" in header
    assert re.search(rf"^#\s*{key}:\s*(null|\d+(\.\d+)?)\s*$", header, re.MULTILINE), recipe
    published = read_published_top1(REPO / recipe) if key == "published_top1" else None
    assert published is None or 0 < published < 100


@pytest.mark.parametrize("recipe", RECIPES)
def test_keys_and_values(recipe):
    data = load(recipe)
    assert isinstance(data, dict)
    unknown = set(data) - parser().field_names()
    assert not unknown, f"{recipe}: unknown keys {sorted(unknown)}"
    assert "output_dir" not in data, "the launch command sets output_dir"
    assert (data.get("num_train_epochs", 0) > 0 or data.get("max_steps", 0) > 0) and data["learning_rate"] > 0
    if data.get("optim") == "sgd":
        # DIST's ImageNet code uses Nesterov momentum (lib/utils/args.py); mdistiller's and RepDistiller's do not.
        assert data.get("optim_args") in ("momentum=0.9", "momentum=0.9,nesterov=True"), (
            f"{recipe}: SGD needs momentum 0.9 through optim_args"
        )
    if "distill_lr_milestones" in data:  # the references' multi-step decay replaces the Trainer's schedule
        assert data["lr_scheduler_type"] == "constant"
        milestones = data["distill_lr_milestones"]
        # Epochs, or optimiser steps for the references that count iterations (detectron2).
        length = data["max_steps"] if data.get("distill_lr_milestones_unit") == "steps" else data["num_train_epochs"]
        assert milestones == sorted(milestones) and 0 < milestones[-1] < length
        assert data["distill_lr_gamma"] == 0.1
    if "distill_lr_decay_epochs" in data:  # DIST's step schedule: its warm-up replaces the Trainer's
        assert "lr_scheduler_type" not in data and "warmup_steps" not in data and "distill_lr_milestones" not in data
        assert data["distill_lr_warmup_epochs"] + data["distill_lr_decay_epochs"] < data["num_train_epochs"]
    if recipe.startswith("recipes/cifar100/"):
        assert data["dataset"] == "uoft-cs/cifar100" and data["label_column"] == "fine_label"
        assert data["train_augment"] == "crop_flip" and data["student_pretrained"] is False


@pytest.mark.parametrize("recipe", RECIPES)
def test_loss_and_kwargs_bind(recipe):
    data = load(recipe)
    loss = data["distill_loss"]
    if loss == "ce":
        assert "teacher_model_name_or_path" not in data and "distill_loss_kwargs" not in data
        return
    get_loss_class(loss)
    resolve_loss_kwargs(loss, data.get("distill_loss_kwargs") or {})
    if "distill_feature_loss" in data:  # detection: a neck loss on top of the logit loss
        resolve_loss_kwargs(data["distill_feature_loss"], data.get("distill_feature_loss_kwargs") or {})


@pytest.mark.parametrize("recipe", RECIPES)
def test_models_resolve(recipe):
    data = load(recipe)
    kinds = ("timm_arch", "timm_hub", "hub", "smp", "torchvision")
    assert resolve_model_name(data["student_model_name_or_path"]).kind in kinds
    teacher = data.get("teacher_model_name_or_path")
    if teacher is None:
        return
    match = LOCAL_TEACHER.match(teacher)
    if match:  # a folder written by a teacher-training recipe: check that recipe instead
        teacher_recipe = f"recipes/{match['dataset']}/teachers/{match['name']}.yaml"
        assert teacher_recipe in RECIPES, f"{recipe}: no recipe trains {teacher}"
        assert f"--output_dir {teacher}\n" in (REPO / teacher_recipe).read_text(encoding="utf-8")
    else:
        assert resolve_model_name(teacher).kind in ("timm_hub", "hub")


@pytest.mark.parametrize("recipe", RECIPES)
def test_parses_through_the_script_parser(recipe, tmp_path):
    model_args, data_args, _, args, _ = parse_recipe(recipe, tmp_path)
    data = load(recipe)
    assert model_args.student_model_name_or_path == data["student_model_name_or_path"]
    assert args.distill_loss == data["distill_loss"]
    assert args.distill_loss_kwargs == (data.get("distill_loss_kwargs") or {})
    assert args.learning_rate == data["learning_rate"]
    assert args.num_train_epochs == data.get("num_train_epochs", 3.0) and args.max_steps == data.get("max_steps", -1)
    if "distill_lr_milestones" in data:
        assert list(args.distill_lr_milestones) == data["distill_lr_milestones"]
    else:
        assert args.distill_lr_milestones is None


@pytest.mark.parametrize(
    "recipe",
    ["recipes/cifar100/kd/resnet8x4_from_resnet32x4.yaml", "recipes/imagenet/dist/resnet18_from_resnet34.yaml"],
)
def test_recipe_builds_sgd_with_momentum(recipe, tmp_path, eval_dataset):
    """The optimizer the Trainer builds from a parsed recipe is SGD with momentum 0.9, the recipe's lr and wd."""
    _, _, _, args, _ = parse_recipe(recipe, tmp_path)
    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=tiny_resnet(wide=True, seed=2), args=args, eval_dataset=eval_dataset
    )
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.SGD
    data = load(recipe)
    for group in optimizer.param_groups:
        assert group["momentum"] == 0.9 and group["lr"] == data["learning_rate"]
        assert group["nesterov"] is ("nesterov=True" in data["optim_args"]) and group["dampening"] == 0
    assert {group["weight_decay"] for group in optimizer.param_groups} == {data["weight_decay"], 0.0}


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith("recipes/imagenet/deit/")])
def test_deit_recipes_build_deits_optimiser_schedule_and_loss(recipe, tmp_path, eval_dataset):
    """DeiT's main.py: AdamW (0.9, 0.999, eps 1e-8) at 1e-3 for batch 1024, wd 0.05 off the 1-D parameters, 5 of 300
    epochs of warm-up, then cosine to 1e-5; Mixup/CutMix with smoothing 0.1; hard distillation at α 0.5."""
    from .testing_utils import tiny_timm_distilled_deit

    _, _, _, args, _ = parse_recipe(recipe, tmp_path)
    trainer = DistillationTrainer(
        model=tiny_timm_distilled_deit(), teacher_model=tiny_resnet(wide=True, seed=2), args=args,
        eval_dataset=eval_dataset,
    )  # fmt: skip
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.AdamW
    assert {(g["lr"], g["betas"], g["eps"]) for g in optimizer.param_groups} == {(1e-3, (0.9, 0.999), 1e-8)}
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    for name, parameter in trainer.student.named_parameters():
        assert (id(parameter) in decay) == (parameter.ndim > 1), name
    steps = 300 * 10  # 10 optimiser steps an epoch
    scheduler = trainer.create_scheduler(steps, optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[50] == pytest.approx(1e-3, rel=1e-3)  # warm-up: 5 epochs
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-2) and min(lrs[50:]) >= 1e-5 * (1 - 1e-6)
    assert trainer._mixer is not None and args.label_smoothing_factor == 0.1 and args.max_grad_norm == 0.0
    assert trainer.distill_loss.hparams() == {"distillation_type": "hard", "alpha": 0.5, "temperature": 1.0}
