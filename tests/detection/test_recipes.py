"""The COCO detection recipes train as their references do, as far as hfkd can: each parses into the run's argument
dataclasses as an object-detection run whose loss has a form for its pair of detectors; its learning rate at chosen
steps is the reference's rule written out by hand (mmcv's by-epoch step policy for MasKD's mmdet configs, detectron2's
WarmupMultiStepLR for MDistiller's and the model zoo's, RT-DETR's constant lr), their linear warm-up included; and
each names its published number (or that it has none, or that it is
unverified) and its known deviations. A slow test runs each recipe's whole path for two steps on the demo scenes."""

import bisect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from transformers import get_scheduler

from hfkd.commands.arguments import build_parser, parse_args
from hfkd.models.torchvision_detection import DETECTION_NETWORKS
from hfkd.results.runs import read_published
from hfkd.tasks.detection.torchvision_distill import check_detector_losses
from hfkd.training.schedulers import get_multistep_schedule, optimizer_steps_per_epoch

from ..testing_utils import slow

REPO = Path(__file__).resolve().parents[2]
COCO = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "recipes" / "coco").rglob("*.yaml"))
COCO_TRAIN_IMAGES = 118_287
"""instances_train2017.json's images, every one of which hfkd's COCO folder loader keeps."""
TEACHERS = "runs/coco/teachers/"


@dataclass(frozen=True)
class Reference:
    """A recipe's reference training rule: `rule` ("mmdet": mmcv's step policy with by-epoch `steps` and a
    500-iteration warm-up; "detectron2": WarmupMultiStepLR with iteration `steps` and a 1,000-iteration warm-up;
    "constant"), `base_lr`, `length` (epochs for mmdet and RT-DETR, iterations for detectron2), `batch` (images per
    step) and the published box AP the header's machine-readable line gives (None: unpublished or unverified)."""

    rule: str
    base_lr: float
    steps: tuple[int, ...]
    length: int
    batch: int
    published: float | None


DIST, DKD, TEACHER = "recipes/coco/dist/", "recipes/coco/dkd/", "recipes/coco/teachers/"
REFERENCES = {
    # MasKD's mmdet 2.x configs: schedule_2x.py (lr 0.02; the RetinaNet configs override 0.01).
    f"{DIST}fasterrcnn_resnet50_fpn_from_fasterrcnn_resnext101_32x8d_fpn.yaml":
        Reference("mmdet", 0.02, (16, 22), 24, 16, 40.4),
    f"{DIST}mimic/fasterrcnn_resnet50_fpn_from_fasterrcnn_resnext101_32x8d_fpn.yaml":
        Reference("mmdet", 0.02, (16, 22), 24, 16, 41.8),
    f"{DIST}retinanet_resnet50_fpn_from_retinanet_resnext101_32x8d_fpn.yaml":
        Reference("mmdet", 0.01, (16, 22), 24, 16, 39.8),
    f"{DIST}mimic/retinanet_resnet50_fpn_from_retinanet_resnext101_32x8d_fpn.yaml":
        Reference("mmdet", 0.01, (16, 22), 24, 16, 40.1),
    f"{TEACHER}retinanet_resnext101_32x8d_fpn.yaml": Reference("mmdet", 0.01, (8, 11), 12, 16, None),
    # MDistiller's DKD configs (180k iterations of 8 images) and detectron2's 3x model-zoo configs.
    f"{DKD}fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn.yaml":
        Reference("detectron2", 0.01, (120_000, 160_000), 180_000, 8, None),
    f"{DKD}fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn.yaml":
        Reference("detectron2", 0.01, (120_000, 160_000), 180_000, 8, None),
    f"{DKD}fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn.yaml":
        Reference("detectron2", 0.01, (120_000, 160_000), 180_000, 8, None),
    f"{TEACHER}fasterrcnn_resnext101_32x8d_fpn.yaml":
        Reference("detectron2", 0.02, (210_000, 250_000), 270_000, 16, 43.0),
    f"{TEACHER}fasterrcnn_resnet101_fpn.yaml": Reference("detectron2", 0.02, (210_000, 250_000), 270_000, 16, 42.0),
    f"{TEACHER}fasterrcnn_resnet50_fpn.yaml": Reference("detectron2", 0.02, (210_000, 250_000), 270_000, 16, 40.2),
    # RT-DETR's rtdetr_r18vd_6x_coco.yml: AdamW at a constant 1e-4 for 72 epochs (its MultiStepLR milestone is 1000).
    f"{DIST}rtdetr_r18vd_from_rtdetr_r50vd.yaml": Reference("constant", 1e-4, (), 72, 16, 46.5),
}  # fmt: skip


def load(recipe: str) -> dict:
    return yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))


def header(recipe: str) -> str:
    lines = (REPO / recipe).read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def parse(recipe: str, tmp_path: Path, *extra: str) -> tuple:
    # --bf16 false, --use_cpu: a GPU recipe parsed on this CPU.
    return parse_args(["--config", recipe, "--output_dir", str(tmp_path / "out"), "--bf16", "false", "--use_cpu",
                       "true", "--report_to", "none", *extra])  # fmt: skip


def processes(recipe: str) -> int:
    """The GPUs the header's launch line runs on: its --num_processes, else multi_gpu.yaml's 8."""
    match = re.search(r"accelerate launch .*--num_processes (\d+)", header(recipe))
    return int(match.group(1)) if match else 8


def mmcv_step_lr(base: float, epoch: int, iteration: int, steps: tuple[int, ...], gamma: float = 0.1) -> float:
    """mmcv's StepLrUpdaterHook as mmdet 2.x's schedule_1x.py / schedule_2x.py set it (policy 'step', by-epoch steps,
    linear warm-up over 500 iterations from ratio 0.001): the regular lr of 0-based `epoch` is
    base * gamma ** #{s : epoch >= s}; before global `iteration` 500 it is scaled by
    1 - (1 - iteration / 500)(1 - 0.001)."""
    regular = base * gamma ** sum(epoch >= s for s in steps)
    if iteration < 500:
        return regular * (1 - (1 - iteration / 500) * (1 - 0.001))
    return regular


def detectron2_lr(base: float, iteration: int, steps: tuple[int, ...], gamma: float = 0.1) -> float:
    """detectron2's WarmupMultiStepLR (solver/build.py, config defaults WARMUP_ITERS 1000, WARMUP_FACTOR 0.001,
    linear): base * gamma ** bisect_right(steps, iteration), during the warm-up times 0.001 (1 - a) + a with
    a = iteration / 1000."""
    factor = gamma ** bisect.bisect_right(steps, iteration)
    if iteration < 1000:
        alpha = iteration / 1000
        factor *= 0.001 * (1 - alpha) + alpha
    return base * factor


def hfkd_lr(args, steps_per_epoch: float, step: int) -> float:
    """The lr of optimiser step `step` under the schedule the trainer builds from the recipe's milestones."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_multistep_schedule(optimizer, args.distill_lr_milestones, args.distill_lr_gamma, steps_per_epoch,
                                      warmup_steps=args.warmup_steps,
                                      warmup_factor=args.distill_lr_warmup_lr / args.learning_rate)  # fmt: skip
    return args.learning_rate * schedule.lr_lambdas[0](step)


def steps_per_epoch(args, recipe: str) -> int:
    """Optimiser steps per epoch of the launch the header names, counted as the trainer counts them."""
    return optimizer_steps_per_epoch(COCO_TRAIN_IMAGES, args.per_device_train_batch_size, processes(recipe),
                                     args.gradient_accumulation_steps, args.dataloader_drop_last)  # fmt: skip


def family(name: str) -> str:
    """A detector's family from its name: a torchvision network, the folder a teacher recipe writes, or a Hub DETR."""
    name = name.removeprefix(TEACHERS)
    return DETECTION_NETWORKS[name][0] if name in DETECTION_NETWORKS else "detr"


def test_every_coco_recipe_has_its_reference_rule():
    assert sorted(REFERENCES) == COCO


@pytest.mark.parametrize("recipe", COCO)
def test_each_recipe_parses_into_the_argument_dataclasses(recipe, tmp_path):
    data = load(recipe)
    assert set(data) <= build_parser().field_names()
    model_args, data_args, _, args, _ = parse(recipe, tmp_path)
    assert args.distill_task == "object-detection" and args.distill_loss == data["distill_loss"]
    assert model_args.student_model_name_or_path == data["student_model_name_or_path"]
    assert args.teacher_model_name_or_path == data.get("teacher_model_name_or_path")
    assert args.distill_loss_kwargs == (data.get("distill_loss_kwargs") or {})
    assert args.distill_feature_loss == data.get("distill_feature_loss")
    assert data_args.dataset == "data/coco" and data_args.image_size == data.get("image_size")
    assert data_args.shortest_edge == data.get("shortest_edge", [800]) and data_args.longest_edge == 1333
    reference = REFERENCES[recipe]
    assert args.learning_rate == reference.base_lr
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * processes(recipe) == reference.batch


@pytest.mark.parametrize("recipe", [r for r in COCO if "/teachers/" not in r])
def test_the_loss_has_a_form_for_the_pair_of_detectors(recipe):
    data = load(recipe)
    student, teacher = data["student_model_name_or_path"], data["teacher_model_name_or_path"]
    check_detector_losses(data["distill_loss"], data.get("distill_feature_loss"), family(student), family(teacher))
    if teacher.startswith(TEACHERS):  # the folder a teacher recipe writes, of the network that recipe trains
        assert load(f"recipes/coco/teachers/{teacher.removeprefix(TEACHERS)}.yaml")["student_model_name_or_path"] == (
            teacher.removeprefix(TEACHERS)
        )
    if data["distill_loss"] == "dkd":  # MDistiller's detection DKD: alpha 1 (the default), beta 0.25, T 1, no warm-up
        assert data["distill_loss_kwargs"] == {"beta": 0.25, "temperature": 1.0, "warmup_epochs": 0.0}
    if data.get("distill_feature_loss"):  # MasKD's mimic: mmrazor's MSELoss, loss_weight 1
        assert data["distill_feature_loss"] == "mimic" and data["distill_feature_loss_kwargs"] == {"loss_weight": 1.0}


@pytest.mark.parametrize("recipe", [r for r, ref in REFERENCES.items() if ref.rule == "mmdet"])
def test_mmdet_recipes_take_mmcvs_lr_epoch_by_epoch_warm_up_included(recipe, tmp_path):
    reference, args = REFERENCES[recipe], parse(recipe, tmp_path)[3]
    assert args.num_train_epochs == reference.length and args.distill_lr_milestones_unit == "epochs"
    per_epoch = steps_per_epoch(args, recipe)
    assert per_epoch == 7_393  # ceil(118,287 / 16): mmdet's epochs, without the images it filters, are ~7,330
    last = reference.length - 1
    points = [(0, 0), (0, 250), (0, 499), (0, 500), (0, per_epoch - 1), (last, per_epoch - 1)]
    points += [(epoch, j) for step in reference.steps for epoch in (step - 1, step) for j in (0, per_epoch - 1)]
    for epoch, j in points:
        # Both count epochs from 0 and the warm-up lies in epoch 0, where both count iterations alike.
        ours = hfkd_lr(args, per_epoch, epoch * per_epoch + j)
        theirs = mmcv_step_lr(reference.base_lr, epoch, epoch * per_epoch + j, reference.steps)
        assert ours == pytest.approx(theirs, rel=1e-12), (epoch, j)  # the warm-up's 500 iterations included
    # By hand: x0.1 from the first step of the epoch after each by-epoch step, x0.01 after both.
    assert hfkd_lr(args, per_epoch, reference.steps[0] * per_epoch) == pytest.approx(reference.base_lr / 10)
    assert hfkd_lr(args, per_epoch, reference.steps[0] * per_epoch - 1) == reference.base_lr
    assert hfkd_lr(args, per_epoch, reference.steps[1] * per_epoch) == pytest.approx(reference.base_lr / 100)


@pytest.mark.parametrize("recipe", [r for r, ref in REFERENCES.items() if ref.rule == "detectron2"])
def test_detectron2_recipes_take_its_lr_step_for_step_warm_up_included(recipe, tmp_path):
    reference, args = REFERENCES[recipe], parse(recipe, tmp_path)[3]
    assert args.max_steps == reference.length and args.distill_lr_milestones_unit == "steps"
    first, second = reference.steps
    for step in (0, 500, 999, 1000, 5000, first - 1, first, second - 1, second, reference.length - 1):
        ours, theirs = hfkd_lr(args, 1.0, step), detectron2_lr(reference.base_lr, step, reference.steps)
        assert ours == pytest.approx(theirs, rel=1e-12), step  # the warm-up's 1,000 iterations included
    assert hfkd_lr(args, 1.0, first - 1) == reference.base_lr
    assert hfkd_lr(args, 1.0, first) == pytest.approx(reference.base_lr / 10)  # iteration 120,000 is the first at x0.1
    assert hfkd_lr(args, 1.0, second) == pytest.approx(reference.base_lr / 100)


def test_rt_detr_recipe_keeps_its_constant_lr_for_72_epochs(tmp_path):
    recipe = f"{DIST}rtdetr_r18vd_from_rtdetr_r50vd.yaml"
    reference, args = REFERENCES[recipe], parse(recipe, tmp_path)[3]
    per_epoch = steps_per_epoch(args, recipe)
    assert per_epoch == 118_287 // 16  # RT-DETR's training loader drops the last partial batch, as the recipe
    total = int(args.num_train_epochs) * per_epoch
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                             num_training_steps=total)  # fmt: skip
    factor = schedule.lr_lambdas[0]
    # RT-DETR's MultiStepLR(milestones=[1000], gamma=0.1), stepped once per epoch, never decays within 72 epochs.
    for step in (0, 1, per_epoch, total // 2, total - 1):
        assert args.learning_rate * factor(step) == reference.base_lr
    assert args.max_grad_norm == 0.1 and args.distill_ema and args.distill_ema_decay == 0.9999


@pytest.mark.parametrize("recipe", COCO)
def test_each_recipe_names_its_published_number_and_its_deviations(recipe):
    text, reference = header(recipe), REFERENCES[recipe]
    assert "# Reproduces: " in text and "\n# Known deviations:\n" in text
    assert read_published(REPO / recipe, "object-detection") == reference.published
    if reference.published is None:  # said in words: not published for this network, or not verified
        assert "UNVERIFIED" in text or "no published number" in text
    if "/dkd/" in recipe:  # the DKD paper's numbers, recalled and not found in a stored source
        assert re.search(r"^# Published mAP: \d+\.\d+ .*-- UNVERIFIED", text, re.MULTILINE)
    if reference.rule != "constant":  # the references warm up linearly, as the recipe does
        warm_up = r"(mmdet|detectron2)'s linear warm-up \(\d+ iterations from 0.001 x lr\):\s+(#\s+)?warmup_steps"
        assert re.search(warm_up, text)
    if "rtdetr" in recipe:
        assert "no published distillation number" in text and "backbone's own lr" in text


def _demo_scenes(root: Path) -> Path:
    from hfkd.tasks.detection.demo import load_demo_detection_scenes

    scenes, _ = load_demo_detection_scenes(train_scenes=4, eval_scenes=2, seed=1, canvas=64)
    scenes.save_to_disk(root / "data")
    return root / "data"


def _tiny_rt_detr(folder: Path, width: int, num_labels: int) -> str:
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])  # fmt: skip
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[32, 64, 128], encoder_hidden_dim=width, d_model=width,
        encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width, decoder_layers=1, num_queries=20, num_denoising=5,
        decoder_in_channels=[width] * 3, encoder_attention_heads=2, decoder_attention_heads=2, num_labels=num_labels,
    )  # fmt: skip
    torch.manual_seed(width)
    RTDetrForObjectDetection(config).save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


RUNS = [r for r in COCO if "/teachers/" not in r]


@slow
@pytest.mark.parametrize("recipe", RUNS)
def test_each_recipe_runs_two_steps_on_the_demo_scenes(recipe, tmp_path):
    """The recipe as written (loss, kwargs, feature loss, schedule, optimiser, EMA) on 64-pixel demo scenes, its
    networks at random init: a torchvision recipe's teacher is its teacher recipe's network, RT-DETR's a tiny pair.
    The lr is lowered and the gradient clipped: a random-init teacher with BatchNorm at its initial statistics gives
    extreme logits, and a random-init student diverges on them within two steps at the recipes' lr (the lr itself is
    checked above)."""
    sys.path.insert(0, str(REPO / "examples"))
    from run_image_distill import main

    data, teacher = load(recipe), load(recipe)["teacher_model_name_or_path"].removeprefix(TEACHERS)
    models = ["--student_pretrained", "false", "--teacher", teacher, "--teacher_pretrained", "false"]
    if family(teacher) == "detr":
        models = ["--student", _tiny_rt_detr(tmp_path / "student", 32, 10), "--teacher",
                  _tiny_rt_detr(tmp_path / "teacher", 48, 10)]  # fmt: skip
    sizes = ["--shortest_edge", "48", "64", "--longest_edge", "64"]
    if data.get("image_size"):
        sizes = ["--image_size", "64"]
    out = tmp_path / "run"
    metrics = main([
        "--config", str(REPO / recipe), "--dataset", str(_demo_scenes(tmp_path)), *models, *sizes,
        "--learning_rate", "1e-4", "--max_grad_norm", "1.0", "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--use_cpu", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
        "--dataloader_num_workers", "0",
    ])  # fmt: skip
    assert 0.0 <= metrics["eval_map"] <= 1.0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)
    if data.get("distill_feature_loss"):
        assert all("distill/mimic" in entry for entry in logged)
