import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from hfkd import DistillationArguments, DistillationTrainer

from .testing_utils import collate, synthetic_dataset, tiny_resnet, tiny_vit


def _args(tmp_path, **kwargs) -> DistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    defaults.update(kwargs)
    return DistillationArguments(**defaults)


def _perturb(model: torch.nn.Module, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logged(trainer: DistillationTrainer, key: str) -> list[float]:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    assert values, f"{key} was never logged (logged: {sorted({k for e in trainer.state.log_history for k in e})})"
    return values


@pytest.mark.parametrize(
    "loss,components",
    [
        ("kd", {"ce", "kd", "loss"}),
        ("dkd", {"ce", "tckd", "nckd", "warmup", "loss"}),
        ("dist", {"ce", "inter", "intra", "loss"}),
    ],
)
def test_distillation_trains_student_and_leaves_teacher_alone(
    tmp_path, student, teacher, train_dataset, eval_dataset, loss, components
):
    _perturb(teacher)
    teacher_before, student_before = _state(teacher), _state(student)
    args = _args(tmp_path, distill_loss=loss)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate,
    )
    assert trainer.teacher_model is teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    result = trainer.train()
    assert result.training_loss > 0
    # Student changed; teacher bit-identical, frozen, in eval mode, and not in the optimizer.
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    for name in components:
        values = _logged(trainer, f"distill/{name}")
        assert len(values) == 2 and all(v == v for v in values), name
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_top5_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1.0


def test_logged_loss_is_the_weighted_sum(tmp_path, student, teacher, train_dataset):
    _perturb(teacher)
    args = _args(tmp_path, distill_loss="kd", distill_ce_weight=0.1, distill_weight=0.9, max_steps=3)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:
        assert entry["loss"] == pytest.approx(0.1 * entry["distill/ce"] + 0.9 * entry["distill/kd"], rel=1e-4)


def test_eval_metrics_match_an_independent_computation(tmp_path, student, teacher, eval_dataset):
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path), eval_dataset=eval_dataset, data_collator=collate
    )
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    metrics = trainer.evaluate()
    assert calls == []  # evaluation never runs the teacher
    batch = collate([eval_dataset[i] for i in range(len(eval_dataset))])
    student.eval()
    with torch.no_grad():
        logits = student(pixel_values=batch["pixel_values"]).logits
    labels = batch["labels"]
    top1 = (logits.argmax(-1) == labels).float().mean().item()
    top5 = (logits.topk(5, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics["eval_accuracy"] == pytest.approx(top1)
    assert metrics["eval_top5_accuracy"] == pytest.approx(top5)
    assert metrics["eval_loss"] == pytest.approx(ce, rel=1e-5)


def test_teacher_runs_without_hidden_states_for_logit_losses(tmp_path, student, teacher, train_dataset):
    seen = []
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("output_hidden_states")), with_kwargs=True)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, max_steps=1),
        train_dataset=train_dataset,
        data_collator=collate,
    )
    trainer.train()
    assert seen == [None]


def test_gradient_accumulation_is_exact(tmp_path):
    data = synthetic_dataset(4, seed=3)
    teacher = tiny_resnet(wide=True, seed=2)
    _perturb(teacher)
    results = []
    for batch_size, accumulation in [(4, 1), (2, 2)]:
        student = tiny_vit(seed=1)  # LayerNorm only, no dropout: per-sample losses decompose exactly
        args = _args(
            tmp_path / f"bs{batch_size}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            distill_loss="kd",
            distill_ce_weight=0.3,
            distill_weight=0.7,
        )
        DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collate
        ).train()
        results.append(_state(student))
    initial = _state(tiny_vit(seed=1))
    assert any(not torch.equal(initial[k], results[0][k]) for k in initial)
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_checkpoints_hold_the_student_only_and_reload(tmp_path, student, teacher, train_dataset):
    _perturb(teacher)
    args = _args(
        tmp_path,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        distill_loss="dkd",
        distill_loss_kwargs={"beta": 2.0},
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    student_keys = set(student.state_dict())
    teacher_shapes = {tuple(v.shape) for v in teacher.state_dict().values()} - {
        tuple(v.shape) for v in student.state_dict().values()
    }
    for folder in [out, out / "checkpoint-1", out / "checkpoint-2"]:
        weights = load_file(folder / "model.safetensors")
        assert set(weights) == student_keys
        assert not teacher_shapes & {tuple(v.shape) for v in weights.values()}
        assert not any(name.endswith((".bin", ".pt")) and "teacher" in name for name in os.listdir(folder))
        config = json.loads((folder / "distill_config.json").read_text())
        assert config["distill_loss"] == "dkd"
        assert config["distill_loss_kwargs"] == {
            "alpha": 1.0,
            "beta": 2.0,
            "temperature": 4.0,
            "warmup_epochs": 20.0,
            "logit_standardization": False,
        }
        assert config["distill_weight"] == 1.0 and config["teacher"]["revision"] == "main"
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    for key, value in student.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)


def test_resume_continues_exactly(tmp_path, train_dataset):
    teacher = tiny_resnet(wide=True, seed=2)
    _perturb(teacher)

    def run(folder, max_steps, resume=None):
        student = tiny_resnet(seed=1)
        args = _args(
            folder,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=2,
            per_device_train_batch_size=4,
            distill_loss="dist",
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
        )
        trainer.train(resume_from_checkpoint=resume)
        return _state(student)

    straight = run(tmp_path / "a", 4)
    # A fresh student and trainer pick the run up from a's step-2 checkpoint (optimizer, schedule, RNG, data order).
    resumed = run(tmp_path / "b", 4, resume=str(tmp_path / "a" / "out" / "checkpoint-2"))
    assert any(not torch.equal(resumed[k], v) for k, v in _state(tiny_resnet(seed=1)).items())
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)


def test_teacher_from_a_path(tmp_path, student, teacher, train_dataset):
    teacher.save_pretrained(tmp_path / "teacher")
    args = _args(tmp_path, teacher_model_name_or_path=str(tmp_path / "teacher"), max_steps=1)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=train_dataset, data_collator=collate)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(trainer.teacher_model.state_dict()[key], value)
    trainer.train()
    assert trainer.distill_config()["teacher"]["name_or_path"] == "teacher"  # a local checkpoint, by its name


def test_ce_only_needs_no_teacher(tmp_path, student, train_dataset):
    trainer = DistillationTrainer(
        model=student, args=_args(tmp_path, distill_loss="ce"), train_dataset=train_dataset, data_collator=collate
    )
    before = _state(student)
    trainer.train()
    assert trainer.teacher_model is None
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_configuration_errors(tmp_path, student, train_dataset):
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=train_dataset)
    with pytest.raises(ValueError, match=r"predicts 7 classes but the student \(and its dataset\) 5.*--loss ce"):
        DistillationTrainer(
            model=student, teacher_model=tiny_resnet(7), args=_args(tmp_path), train_dataset=train_dataset
        )
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="DistillationArguments"):
        DistillationTrainer(
            model=student, teacher_model=tiny_resnet(), args=TrainingArguments(output_dir=str(tmp_path))
        )


def test_teacher_runs_under_the_students_autocast(tmp_path, student, teacher, train_dataset):
    dtypes = []
    teacher.register_forward_hook(lambda m, a, out: dtypes.append(out.logits.dtype))
    args = _args(tmp_path, bf16=True, max_steps=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    trainer.train()
    assert dtypes == [torch.bfloat16]
    # Cast once to the mixed-precision dtype: a frozen teacher needs no float32 master weights.
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(v == v for v in _logged(trainer, "distill/kd"))


def test_unlabelled_samples_get_no_ce_and_teacher_labels_for_dkd(tmp_path, student, teacher):
    _perturb(teacher)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, distill_loss="dkd"), data_collator=collate
    )
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    labels = torch.tensor([1, -1, 3, -1])
    seen = []
    original = trainer.distill_loss.forward
    trainer.distill_loss.forward = lambda s, t, batch: seen.append(batch.labels.clone()) or original(s, t, batch)
    trainer.model.train()
    trainer.compute_loss(trainer.model, {"pixel_values": pixels, "labels": labels})
    with torch.no_grad():
        teacher_argmax = teacher(pixel_values=pixels).logits.argmax(-1)
        logits = student(pixel_values=pixels).logits
    assert seen[0].tolist() == [1, teacher_argmax[1].item(), 3, teacher_argmax[3].item()]
    ce = trainer._cross_entropy(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    torch.testing.assert_close(ce, expected)
    assert trainer._cross_entropy(logits, torch.full((4,), -1)).item() == 0.0


@pytest.fixture
def adapter_loss(monkeypatch):
    """A user loss with a trainable projector: the teacher's logits are matched through a learned linear map."""
    from hfkd.losses import DistillationLoss, LossNeeds, logits_of, register_loss
    from hfkd.losses import registry as registry_module

    monkeypatch.setattr(registry_module, "_LOSSES", dict(registry_module._LOSSES))

    @register_loss("test_projector")
    class ProjectorLoss(DistillationLoss):
        needs = LossNeeds(hidden_states=True)

        def __init__(self, *, context) -> None:
            super().__init__()
            self.shapes = (context.student_feature_shapes, context.teacher_feature_shapes)
            channels = context.student_feature_shapes[-1][0]
            self.projector = torch.nn.Linear(channels, context.teacher_feature_shapes[-1][0])

        def forward(self, student, teacher, batch):
            from hfkd.losses._feature_maps import pooled_features

            projected = self.projector(pooled_features(student))
            loss = (projected - pooled_features(teacher)).pow(2).mean() + 0 * logits_of(student).sum()
            return {"loss": loss, "projector": loss.detach()}

    return ProjectorLoss


def test_trainable_loss_parameters_train_save_beside_and_resume(tmp_path, adapter_loss, train_dataset):
    from safetensors.torch import load_file as load_safetensors

    from hfkd.training.student_module import ADAPTERS_NAME, DistillationModule

    teacher = tiny_resnet(wide=True, seed=2)

    def run(folder, resume=None):
        student = tiny_resnet(seed=1)
        args = _args(folder, distill_loss="test_projector", max_steps=4, save_strategy="steps", save_steps=2)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
        )
        return trainer, student

    trainer, student = run(tmp_path / "a")
    loss = trainer.model.distill_loss
    assert isinstance(trainer.model, DistillationModule)
    # Shapes were probed on real inputs: stem + 2 stages, student 8/16 channels, teacher 16/32.
    assert [s[0] for s in loss.shapes[0]] == [8, 8, 16] and [s[0] for s in loss.shapes[1]] == [8, 16, 32]
    before = loss.projector.weight.detach().clone()
    trainer.train()
    trainer.save_model()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(loss.projector.weight) in optimized
    assert not torch.equal(before, loss.projector.weight)
    out = tmp_path / "a" / "out"
    assert set(load_safetensors(out / "model.safetensors")) == set(student.state_dict())
    torch.testing.assert_close(load_safetensors(out / ADAPTERS_NAME)["projector.weight"], loss.projector.weight)
    reloaded = AutoModelForImageClassification.from_pretrained(out)
    for key, value in student.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value)

    resumed, resumed_student = run(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    torch.testing.assert_close(resumed.model.distill_loss.projector.weight, loss.projector.weight, rtol=0, atol=0)
    for key, value in student.state_dict().items():
        torch.testing.assert_close(resumed_student.state_dict()[key], value, rtol=0, atol=0)


def test_channels_last_and_compiled_teacher(tmp_path, student, teacher, train_dataset):
    seen = []
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"]), with_kwargs=True)
    args = _args(tmp_path, distill_channels_last=True, teacher_compile=True, teacher_compile_backend="eager")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    for model in (student, teacher):
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert "compile" in type(teacher.forward).__name__.lower() or hasattr(
        teacher.forward, "_torchdynamo_orig_callable"
    )
    trainer.train()
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    assert all(v == v for v in _logged(trainer, "distill/kd"))


@pytest.mark.parametrize("loss", ["kd", "dkd", "dist", "mlkd"])
def test_the_step_never_reads_values_back(tmp_path, student, teacher, monkeypatch, loss):
    """No .item()/.tolist() in compute_loss: on a GPU each would synchronise the device every step."""
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, distill_loss=loss), data_collator=collate
    )
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    inputs = {"pixel_values": pixels, "strong_pixel_values": pixels.flip(-1), "labels": torch.tensor([0, 1, 2, 3])}

    def forbidden(*args, **kwargs):
        raise AssertionError("a host read-back in the training step")

    trainer.model.train()
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    loss_value = trainer.compute_loss(trainer.model, inputs)
    monkeypatch.undo()
    assert torch.isfinite(loss_value)


def test_multistep_schedule_matches_the_references_rule(tmp_path, student, teacher, train_dataset):
    """16 samples at batch 4: 4 steps per epoch; milestones [1, 2] decay after the 1st and the 2nd epoch
    (mdistiller: lr × 0.1 ** #{m : epoch > m} with 1-based epochs), no warm-up."""
    args = _args(
        tmp_path,
        max_steps=-1,
        num_train_epochs=3,
        optim="sgd",
        learning_rate=0.4,
        distill_lr_milestones=[1, 2],
        distill_lr_gamma=0.1,
        warmup_steps=0,
        logging_steps=50,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    used = []
    original = trainer.compute_loss

    def spy(*a, **kw):
        used.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    expected = [0.4 * 0.1 ** sum(1 for m in (1, 2) if epoch + 1 > m) for epoch in range(3) for _ in range(4)]
    assert used == pytest.approx(expected)


def test_bad_milestones_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="increasing"):
        _args(tmp_path, distill_lr_milestones=[180, 150])
    with pytest.raises(ValueError, match="distill_lr_gamma"):
        _args(tmp_path, distill_lr_milestones=[150], distill_lr_gamma=0)


def test_total_flos_counts_the_student_as_a_bare_student_run_does(tmp_path, student, teacher, train_dataset):
    """The trainer's model wraps the student with the loss; the flos estimate still reads the student."""
    flos = []
    for loss in ("ce", "kd"):
        trainer = DistillationTrainer(
            model=tiny_resnet(seed=1), teacher_model=teacher, args=_args(tmp_path / loss, distill_loss=loss),
            train_dataset=train_dataset, data_collator=collate,
        )  # fmt: skip
        trainer.train()
        flos.append(trainer.state.total_flos)
    assert flos[0] > 0 and flos[0] == flos[1]


# --------------------------------------------------------------------------------------------- edge paths (issue 19)


def test_a_model_init_student_is_trained_with_its_own_loss_module_and_ema(tmp_path, teacher, train_dataset):
    """`Trainer.train` calls `model_init` again (each trial of a hyperparameter search): that student is the one
    wrapped with the loss, trained, and averaged."""
    from hfkd.training.student_module import DistillationModule

    _perturb(teacher)
    built = []

    def model_init():
        built.append(tiny_resnet(seed=1))
        return built[-1]

    args = _args(tmp_path, distill_ema=True, distill_ema_decay=0.5)
    trainer = DistillationTrainer(
        model_init=model_init, teacher_model=teacher, args=args, train_dataset=train_dataset, data_collator=collate
    )
    first_ema = trainer.ema
    initial = _state(tiny_resnet(seed=1))
    trainer.train()
    student = built[-1]
    assert len(built) == 2 and trainer.student is student and trainer.model.student is student
    assert isinstance(trainer.model, DistillationModule) and trainer.model.distill_loss is trainer.distill_loss
    assert any(not torch.equal(initial[k], v) for k, v in student.state_dict().items())
    assert trainer.ema.student is student and trainer.ema is not first_ema
    callbacks = trainer.callback_handler.callbacks
    assert trainer.ema in callbacks and first_ema not in callbacks
    averaged = trainer.ema.state_dict()
    assert any(not torch.equal(initial[k], averaged[k]) for k in initial if initial[k].is_floating_point())
    assert len(_logged(trainer, "distill/kd")) == 2


def test_fsdp_is_refused_in_one_line(tmp_path, student, teacher, monkeypatch):
    with pytest.raises(ValueError, match="does not support FSDP.*DDP.*DeepSpeed ZeRO"):
        DistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path, fsdp="full_shard"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # an `accelerate launch` FSDP config
    with pytest.raises(ValueError, match="does not support FSDP"):
        DistillationTrainer(model=student, teacher_model=teacher, args=_args(tmp_path))


def test_adapters_are_saved_from_the_gathered_state_dict(tmp_path, adapter_loss, train_dataset):
    """Under ZeRO-3 a module holds only its part of each parameter: `save_model` gathers the whole state dict and
    hands it to `_save`, where the student and the loss's parameters must both come from it."""
    from safetensors.torch import load_file as load_safetensors

    from hfkd.training.student_module import ADAPTERS_NAME

    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=tiny_resnet(wide=True, seed=2),
        args=_args(tmp_path, distill_loss="test_projector"), train_dataset=train_dataset, data_collator=collate,
    )  # fmt: skip
    gathered = {k: v + 1.0 if v.is_floating_point() else v for k, v in trainer.model.state_dict().items()}
    trainer._save(str(tmp_path / "gathered"), state_dict=gathered)
    adapters = load_safetensors(tmp_path / "gathered" / ADAPTERS_NAME)
    student = load_safetensors(tmp_path / "gathered" / "model.safetensors")
    assert set(adapters) == {"projector.weight", "projector.bias"}
    for key, value in adapters.items():
        torch.testing.assert_close(value, gathered[f"distill_loss.{key}"], rtol=0, atol=0)
    for key, value in student.items():
        torch.testing.assert_close(value, gathered[f"student.{key}"], rtol=0, atol=0)
    trainer._save(str(tmp_path / "live"))  # no state dict: the module's own weights
    adapters = load_safetensors(tmp_path / "live" / ADAPTERS_NAME)
    torch.testing.assert_close(adapters["projector.weight"], trainer.distill_loss.projector.weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "labels,batch_size,steps",
    [([2, -1, -1, -1], 2, 2), ([0, 1, 2], 2, 2), ([4, -1, 1, -1, -1], 2, 3)],
    ids=["unequal-labelled-counts", "short-last-micro-batch", "both"],
)
def test_accumulation_equals_the_whole_batch_whatever_its_micro_batches_hold(tmp_path, labels, batch_size, steps):
    """One step over micro-batches with fewer labels (`--labelled_samples`), or a short last one, is the step over
    their union: a micro-batch's CE weighs by its labelled samples, its distillation loss by its samples."""
    data = synthetic_dataset(len(labels), seed=3).map(lambda _, i: {"labels": labels[i]}, with_indices=True)
    teacher = tiny_resnet(wide=True, seed=2)
    _perturb(teacher)
    states, losses = [], []
    for size, accumulation in [(len(labels), 1), (batch_size, steps)]:
        student = tiny_vit(seed=1)  # LayerNorm only, no dropout: per-sample losses decompose exactly
        args = _args(
            tmp_path / f"bs{size}", per_device_train_batch_size=size, gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", distill_loss="kd", distill_ce_weight=0.3,
            distill_weight=0.7,
        )  # fmt: skip
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collate
        )
        losses.append(trainer.train().training_loss)
        states.append(_state(student))
    initial = _state(tiny_vit(seed=1))
    assert any(not torch.equal(initial[k], states[0][k]) for k in initial)
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-5, atol=1e-6)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_the_student_stays_where_the_trainer_does_not_place_models(tmp_path, teacher):
    """With `place_model_on_device` false (DeepSpeed, FSDP, a device map, full-precision-cast evaluation) the
    Trainer leaves the model where it is; so does the student module."""

    class Unplaced(DistillationArguments):
        @property
        def place_model_on_device(self) -> bool:
            return False

    with torch.device("meta"):
        student = tiny_resnet(seed=1)
    args = Unplaced(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert not trainer.place_model_on_device and trainer.model.student is student
    assert {p.device.type for p in trainer.model.parameters()} == {"meta"}


def test_evaluation_scores_every_image_whatever_the_training_loader_drops(tmp_path, student, teacher):
    """`dataloader_drop_last` (the CIFAR recipes set it for training) must not drop evaluation images, and the
    teacher evaluates on a set smaller than one batch."""
    eval_dataset = synthetic_dataset(10, seed=4)  # a batch of 8, and 2 images more
    args = _args(tmp_path, per_device_eval_batch_size=8, dataloader_drop_last=True)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=eval_dataset, data_collator=collate
    )
    scored = []
    compute_metrics = trainer.compute_metrics
    trainer.compute_metrics = lambda predicted: scored.append(len(predicted.label_ids)) or compute_metrics(predicted)
    metrics = trainer.evaluate()
    batch = collate([eval_dataset[i] for i in range(10)])
    student.eval()
    with torch.no_grad():
        logits = student(pixel_values=batch["pixel_values"]).logits
    assert scored == [10]
    assert metrics["eval_accuracy"] == pytest.approx((logits.argmax(-1) == batch["labels"]).float().mean().item())
    assert trainer.predict(eval_dataset).predictions.shape[0] == 10
    assert trainer.args.dataloader_drop_last  # the training loader still drops its last partial batch

    small = synthetic_dataset(3, seed=5)
    teacher_metrics = trainer.evaluate_teacher(small)
    batch = collate([small[i] for i in range(3)])
    with torch.no_grad():
        expected = (teacher(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).float().mean()
    assert teacher_metrics["teacher_eval_accuracy"] == pytest.approx(expected.item())
