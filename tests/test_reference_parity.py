"""The first optimiser steps of a recipe, run by the real script, are the reference training code's steps.

`examples/run_image_distill.main` runs the recipe exactly as `--config` loads it, with only what makes it small and
offline overridden on the command line (a synthetic CIFAR-shaped dataset, a random-init teacher folder written by
`hfkd.convert`, 4 steps of batch 4 on the CPU, no saving or evaluation during training). A trainer subclass records
what the script trained on: the student's weights before the first step, each batch, the lr, the loss terms and the
student's state and SGD momentum after each optimiser step. `tests/parity_references.py` then replays the same batches
through a hand-written iteration of the reference's training code (its optimiser groups, lr rule, loss weights, no
clipping) and everything must agree to float noise: lr, loss terms, every parameter, BatchNorm buffer and momentum
buffer. Step 0 starts from the script's initial weights; every later reference step starts from the state the script
reached one step earlier, so each update is compared on its own: a random-init network at lr 0.05 amplifies float
noise about a hundredfold per step, which would otherwise swamp the comparison after two steps.

KD and DKD resnet32x4 -> resnet8x4 against MDistiller, DIST resnet32x4 -> resnet8x4 against DIST's CIFAR code;
`test_comparison_notices_the_trainer_defaults` checks that the comparison fails with gradient clipping (the Trainer's
`max_grad_norm` 1.0) or the Trainer's weight-decay exemption of biases, the two rules the recipes switch off. The
whole 240-epoch lr schedules are compared step by step, and a DIST B2 recipe's optimiser update against DIST's
RMSpropTF.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from transformers import TrainerCallback

from hfkd import DistillationTrainer
from hfkd.commands import distill
from hfkd.commands.arguments import build_parser
from hfkd.models.convert import CIFAR100_FINE_LABELS, convert_checkpoint
from hfkd.training.schedulers import multistep_lambda, optimizer_steps_per_epoch, step_decay_lambda

from .parity_references import (
    B2Solver,
    DISTCifarSolver,
    DISTResNetSolver,
    MDistillerSolver,
    ReferenceSGDLoop,
    dist_cifar,
    loader_batch_sizes,
    mdistiller_dkd,
    mdistiller_kd,
    steps_per_epoch,
)
from .testing_utils import tiny_resnet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import run_image_distill  # noqa: E402

NUM_TRAIN, BATCH, STEPS = 10, 4, 4  # 10 = 2·4 + 2: a partial last batch, so drop_last shows in the epochs
# float32 noise between two implementations of the same step; the rules under test move weights by 1e-6 and more.
ATOL, RTOL = 2e-7, 1e-5
TEACHER_LOGIT_SCALE = 0.1


@dataclass
class ScriptRun:
    """What `run_image_distill.main` trained on and produced, step by step."""

    initial: dict[str, torch.Tensor] = field(default_factory=dict)
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    lrs: list[list[float]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    momenta: list[dict[str, torch.Tensor]] = field(default_factory=list)


def _timm_state(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    # The bare timm network inside the transformers wrapper: the reference networks' parameter names.
    return {name: value.detach().clone() for name, value in trainer.student.timm_model.state_dict().items()}


def recording_trainer(record: ScriptRun) -> type[DistillationTrainer]:
    class Recorder(TrainerCallback):
        def __init__(self, trainer: DistillationTrainer) -> None:
            self.trainer = trainer

        def on_train_begin(self, args, state, control, **kwargs):
            record.initial = _timm_state(self.trainer)

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            record.lrs.append([group["lr"] for group in optimizer.param_groups])

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            record.states.append(_timm_state(self.trainer))
            params = self.trainer.student.timm_model.named_parameters()
            record.momenta.append({n: optimizer.state[p]["momentum_buffer"].clone() for n, p in params})

    class RecordingTrainer(DistillationTrainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.add_callback(Recorder(self))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            record.batches.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            record.epochs.append(float(self.state.epoch or 0.0))
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # The terms this step appended to the trainer's metric lists (cleared only at logging, every 50 steps).
            terms = {name: values[-1].item() for name, values in self._metrics.items()}
            record.metrics.append({**terms, "total": loss.item()})
            return loss

    return RecordingTrainer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A CIFAR-100-shaped dataset folder (the recipe's `fine_label` column, 100 classes) and a teacher folder
    converted by `hfkd.convert` from a random-init resnet32x4 checkpoint, as a released teacher would be."""
    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=list(CIFAR100_FINE_LABELS))})

    def split(size: int) -> Dataset:
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(size)]
        return Dataset.from_dict({"img": images, "fine_label": rng.integers(0, 100, size).tolist()}, features=features)

    DatasetDict({"train": split(NUM_TRAIN), "test": split(4)}).save_to_disk(root / "data")
    torch.manual_seed(1)
    teacher = timm.create_model("cifar_resnet32x4", num_classes=100)
    with torch.no_grad():  # tame logits, so that 4 steps at lr 0.05 stay well-conditioned (float noise stays noise)
        teacher.fc.weight.mul_(TEACHER_LOGIT_SCALE)
    torch.save({"model": teacher.state_dict()}, root / "ckpt_epoch_240.pth")
    convert_checkpoint(root / "ckpt_epoch_240.pth", "resnet32x4", root / "teacher")
    return {"data": root / "data", "teacher": root / "teacher", "checkpoint": root / "ckpt_epoch_240.pth"}


def run_recipe(recipe: str, workspace: dict[str, Path], out: Path, *overrides: str) -> ScriptRun:
    record = ScriptRun()
    argv = [
        "--config", str(REPO / recipe), "--output_dir", str(out), "--dataset", str(workspace["data"]),
        "--teacher_model_name_or_path", str(workspace["teacher"]), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size", "4", "--use_cpu", "true",
        "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
        "--evaluate_teacher", "false", *overrides,
    ]  # fmt: skip
    original = distill.DistillationTrainer  # the example builds its trainer with hfkd distill's step
    distill.DistillationTrainer = recording_trainer(record)
    try:
        run_image_distill.main(argv)
    finally:
        distill.DistillationTrainer = original
    assert len(record.batches) == len(record.states) == STEPS
    return record


def reference_loop(run: ScriptRun, workspace: dict[str, Path], loss_terms, solver) -> ReferenceSGDLoop:
    """The reference's iteration over its student (the script's initial weights) and teacher (the checkpoint)."""
    student = timm.create_model("cifar_resnet8x4", num_classes=100)
    student.load_state_dict(run.initial)
    teacher = timm.create_model("cifar_resnet32x4", num_classes=100)
    teacher.load_state_dict(torch.load(workspace["checkpoint"], weights_only=True)["model"])
    return ReferenceSGDLoop(
        student,
        teacher,
        loss_terms,
        momentum=solver.momentum,
        weight_decay=solver.weight_decay,
        nesterov=getattr(solver, "nesterov", False),
    )


def check_data_order(run: ScriptRun, *, drop_last: bool) -> list[int]:
    """The script's batches are those of the reference's shuffled loader; returns each step's 1-based epoch."""
    sizes = [len(batch["labels"]) for batch in run.batches]
    assert sizes == loader_batch_sizes(NUM_TRAIN, BATCH, STEPS, drop_last=drop_last)
    per_epoch = steps_per_epoch(NUM_TRAIN, BATCH, drop_last=drop_last)
    epochs = [k // per_epoch + 1 for k in range(STEPS)]
    assert [math.floor(epoch + 1e-9) + 1 for epoch in run.epochs] == epochs
    first_epoch = torch.cat([batch["sample_index"] for batch in run.batches[:per_epoch]]).tolist()
    assert len(set(first_epoch)) == len(first_epoch), "an epoch draws each sample at most once"
    if not drop_last:
        assert sorted(first_epoch) == list(range(NUM_TRAIN))
    assert all("teacher_pixel_values" not in batch for batch in run.batches), "teacher and student share pixels"
    return epochs


def assert_same_steps(run: ScriptRun, loop: ReferenceSGDLoop, lrs: list[float], epochs: list[int], recipe: str):
    """Replay each step from the script's previous state and compare lr, loss terms and the state after it."""
    config = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    for step, batch in enumerate(run.batches):
        reference = loop.step(
            batch["pixel_values"],
            batch["labels"],
            lr=lrs[step],
            epoch=epochs[step],
            state=run.initial if step == 0 else run.states[step - 1],
            momentum=None if step == 0 else run.momenta[step - 1],
        )
        assert run.lrs[step] == pytest.approx([reference.lr] * len(run.lrs[step]), rel=1e-12), f"step {step}: lr"
        ours, theirs = run.metrics[step], reference.terms
        assert config.get("distill_ce_weight", 1.0) * ours["ce"] == pytest.approx(theirs["loss_ce"], rel=RTOL)
        assert config.get("distill_weight", 1.0) * ours["loss"] == pytest.approx(theirs["loss_kd"], rel=RTOL)
        assert ours["total"] == pytest.approx(sum(theirs.values()), rel=RTOL)
        for mine, expected, what in ((run.states, reference.state, "state"), (run.momenta, reference.momentum, "sgd")):
            assert mine[step].keys() == expected.keys()
            for name, value in expected.items():
                torch.testing.assert_close(mine[step][name], value, atol=ATOL, rtol=RTOL, msg=f"{step} {what} {name}")


MDISTILLER = {"kd": mdistiller_kd, "dkd": mdistiller_dkd}


@pytest.mark.parametrize("method", sorted(MDISTILLER))
def test_mdistiller_recipe_takes_mdistillers_steps(method, workspace, tmp_path):
    recipe = f"recipes/cifar100/{method}/resnet8x4_from_resnet32x4.yaml"
    run = run_recipe(recipe, workspace, tmp_path / "run")
    epochs = check_data_order(run, drop_last=False)
    solver = MDistillerSolver()
    loop = reference_loop(run, workspace, MDISTILLER[method], solver)
    assert_same_steps(run, loop, [solver.lr_at(epoch) for epoch in epochs], epochs, recipe)


def test_dist_cifar_recipe_takes_dists_steps(workspace, tmp_path):
    recipe = "recipes/cifar100/dist/resnet8x4_from_resnet32x4.yaml"
    run = run_recipe(recipe, workspace, tmp_path / "run")
    epochs = check_data_order(run, drop_last=True)
    solver = DISTCifarSolver()
    per_epoch = steps_per_epoch(NUM_TRAIN, BATCH, drop_last=True)
    loop = reference_loop(run, workspace, dist_cifar, solver)
    assert_same_steps(run, loop, [solver.lr_after(step, per_epoch) for step in range(STEPS)], epochs, recipe)


@pytest.mark.parametrize(
    ("recipe", "solver", "train_size", "devices"),
    [
        ("recipes/cifar100/kd/resnet8x4_from_resnet32x4.yaml", MDistillerSolver(), 50_000, 1),
        ("recipes/cifar100/dist/resnet8x4_from_resnet32x4.yaml", DISTCifarSolver(), 50_000, 1),
        ("recipes/cifar100/dist/mobilenetv2_from_resnet50.yaml", DISTCifarSolver(lr=0.01, warmup_lr=0.01), 50_000, 1),
        ("recipes/imagenet/dist/resnet18_from_resnet34.yaml", DISTResNetSolver(), 1_281_167, 8),
        ("recipes/imagenet/dist/resnet18_from_resnet50_sb.yaml", B2Solver(), 1_281_167, 8),
        ("recipes/imagenet/dist/kd/resnet50_from_swin_large.yaml", B2Solver(), 1_281_167, 8),
    ],
    ids=["mdistiller-cifar", "dist-cifar", "dist-cifar-lr-0.01", "dist-imagenet", "dist-b2", "dist-b2-kd"],
)
def test_whole_lr_schedule_follows_the_reference(recipe, solver, train_size, devices):
    """The recipe's lr at every optimiser step of the whole run is the reference's (CIFAR: one GPU, ImageNet: eight):
    MDistiller's epoch rule; DIST's StepLR handed the iteration count, after its CIFAR warm-up of 120 epochs at the
    full lr (the decays come one iteration into epochs 150, 180 and 210) or its B2 warm-up in stairs from 1e-6 over
    3 epochs (then x0.97 every 2.4 epochs), and without a warm-up on its baseline ImageNet schedule."""
    config = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8"))
    drop_last = config.get("dataloader_drop_last", False)
    assert drop_last is isinstance(solver, DISTCifarSolver), "DIST drops the last partial batch, MDistiller keeps it"
    batch = config["per_device_train_batch_size"]
    per_epoch = optimizer_steps_per_epoch(train_size, batch, devices, 1, drop_last)
    assert per_epoch == steps_per_epoch(train_size, batch * devices, drop_last=drop_last)
    base = config["learning_rate"]
    if "distill_lr_decay_epochs" in config:
        assert isinstance(solver, DISTCifarSolver)  # DIST's own step schedule
        ours = step_decay_lambda(
            config["distill_lr_decay_epochs"], config["distill_lr_gamma"], per_epoch,
            config["distill_lr_warmup_epochs"], config["distill_lr_warmup_lr"] / base,
        )  # fmt: skip
    else:
        ours = multistep_lambda(config["distill_lr_milestones"], config["distill_lr_gamma"], per_epoch)
    assert base == solver.lr
    if isinstance(solver, MDistillerSolver):
        theirs = lambda step: solver.lr_at(step // per_epoch + 1)  # noqa: E731
    else:
        theirs = lambda step: solver.lr_after(step, per_epoch)  # noqa: E731
    steps = int(config["num_train_epochs"]) * per_epoch
    differ = [k for k in range(steps) if not math.isclose(base * ours(k), theirs(k), rel_tol=1e-9)]
    assert differ == []


@pytest.mark.parametrize(
    "overrides",
    [("--max_grad_norm", "1.0"), ("--distill_decay_all_parameters", "false")],
    ids=["trainer-clipping", "trainer-decay-exemption"],
)
def test_comparison_notices_the_trainer_defaults(overrides, workspace, tmp_path):
    """Put back one Trainer default the recipes switch off: the KD recipe's steps no longer match MDistiller's."""
    recipe = "recipes/cifar100/kd/resnet8x4_from_resnet32x4.yaml"
    run = run_recipe(recipe, workspace, tmp_path / "run", *overrides)
    epochs = check_data_order(run, drop_last=False)
    solver = MDistillerSolver()
    loop = reference_loop(run, workspace, mdistiller_kd, solver)
    with pytest.raises(AssertionError, match=r"^0 (state|sgd) "):
        assert_same_steps(run, loop, [solver.lr_at(epoch) for epoch in epochs], epochs, recipe)


def test_b2_recipe_optimiser_is_dists_rmsproptf(tmp_path, eval_dataset):
    """The optimiser a DIST B2 recipe builds (timm's rmsproptf with the recipe's kwargs) takes the steps of DIST's own
    RMSpropTF (`lib/utils/optim.py:66-181`: square average from ones, eps inside the root, lr folded into the
    momentum buffer, L2 weight decay added to the gradient), on each parameter with its group's weight decay."""
    recipe = "recipes/imagenet/dist/resnet18_from_resnet50_sb.yaml"
    argv = ["--config", recipe, "--output_dir", str(tmp_path / "out"), "--bf16", "false", "--use_cpu", "true"]
    *_, args, _ = build_parser().parse([*argv, "--report_to", "none"])
    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=tiny_resnet(wide=True, seed=2), args=args, eval_dataset=eval_dataset
    )
    optimizer = trainer.create_optimizer()
    solver = B2Solver()
    assert (args.learning_rate, args.weight_decay) == (solver.lr, solver.weight_decay)
    params = [(p, group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]]
    expected = [p.detach().clone() for p, _ in params]
    square_avgs = [torch.ones_like(p) for p in expected]
    buffers = [torch.zeros_like(p) for p in expected]
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=generator) for p, _ in params]
        for (param, _), grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()
        for i, ((_, weight_decay), grad) in enumerate(zip(params, grads, strict=True)):
            expected[i] = solver.rmsproptf_step(expected[i], grad, square_avgs[i], buffers[i], weight_decay)
    for (param, _), value in zip(params, expected, strict=True):
        torch.testing.assert_close(param.detach(), value, atol=1e-6, rtol=1e-5)
