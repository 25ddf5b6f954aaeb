"""DeiT's distillation through attention (`--loss deit`) with the students it trains: transformers'
DeiTForImageClassificationWithTeacher and timm's distilled DeiT (in its distilled training mode). The trainer's
step equals the paper's objective on the mixed batch (the class head's soft-target CE, the distillation head's CE
against the teacher's top class), each head gets gradient from its own term only, the saved student predicts with
the mean of both heads in transformers, the pipeline and timm, and a student without a distillation head is refused
before anything loads."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, ViTImageProcessor, pipeline

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.commands.smoke import smoke_model_name
from hfkd.data.mixing import BatchMixer
from hfkd.models.distillation_head import config_has_distillation_head, has_distillation_head
from hfkd.utils.errors import UsageError

from .losses.reference import deit as reference_deit
from .testing_utils import perturbed, tiny_deit_with_teacher, tiny_resnet, tiny_timm_distilled_deit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

NUM_CLASSES = 5
STUDENTS = {"transformers": tiny_deit_with_teacher, "timm": tiny_timm_distilled_deit}
# Each student's class head and distillation head.
HEADS = {"transformers": ("cls_classifier.", "distillation_classifier."), "timm": ("timm_model.head.",
         "timm_model.head_dist.")}  # fmt: skip


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(4, 3, 32, 32, generator=g),
            "labels": torch.randint(0, NUM_CLASSES, (4,), generator=g)}  # fmt: skip


def _trainer(tmp_path, kind: str, **args) -> DistillationTrainer:
    teacher = perturbed(tiny_resnet(NUM_CLASSES, wide=True, seed=2).eval(), seed=5)
    arguments = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, distill_loss="deit", **args
    )
    return DistillationTrainer(model=STUDENTS[kind](NUM_CLASSES, seed=1), teacher_model=teacher, args=arguments)


def _heads(trainer: DistillationTrainer, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads of the trainer's student on `pixels`, read from its training forward."""
    out = trainer.student(pixel_values=pixels)
    if isinstance(out.logits, tuple):  # timm in distilled training mode
        return out.logits
    return out.cls_logits, out.distillation_logits


@pytest.mark.parametrize("kind", ["transformers", "timm"])
@pytest.mark.parametrize("distillation_type", ["hard", "soft"])
def test_the_step_is_deits_objective_on_the_mixed_batch(tmp_path, kind, distillation_type):
    mixing = {"distill_mixup": 0.8, "distill_cutmix": 1.0, "label_smoothing_factor": 0.1, "seed": 4}
    kwargs = {"distillation_type": distillation_type, "alpha": 0.3, "temperature": 2.0}
    trainer = _trainer(tmp_path, kind, distill_loss_kwargs=kwargs, **mixing)
    trainer.model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(trainer.model, _batch())
    # The same mix (timm's Mixup in batch mode, smoothing folded into the targets), the paper's equations by hand.
    mixed = BatchMixer(0.8, 1.0, NUM_CLASSES, 0.1, seed=4)(_batch(), 0)
    with torch.no_grad():
        torch.manual_seed(0)
        cls_logits, distillation_logits = _heads(trainer, mixed["pixel_values"])
        teacher_logits = trainer.teacher_model(pixel_values=mixed["pixel_values"]).logits
    expected, base, distillation = reference_deit(
        cls_logits.double().numpy(), distillation_logits.double().numpy(), teacher_logits.double().numpy(),
        mixed["labels"].double().numpy(), distillation_type, 0.3, 2.0,
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    logged = {name: torch.stack(values).mean().item() for name, values in trainer._metrics.items()}
    assert logged["base"] == pytest.approx(base, rel=1e-5)
    assert logged["distillation"] == pytest.approx(distillation, rel=1e-5)
    assert logged["ce"] == pytest.approx(0.7 * base, rel=1e-5)
    assert logged["loss"] == pytest.approx(0.3 * distillation, rel=1e-5)
    # Evaluation scores the mean of both heads (transformers' `logits`, timm's eval output).
    trainer.model.eval()
    batch = _batch(1)
    _, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    trainer.model.train()
    with torch.no_grad():
        cls_logits, distillation_logits = _heads(trainer, batch["pixel_values"])
    torch.testing.assert_close(outputs["logits"], (cls_logits + distillation_logits) / 2)


@pytest.mark.parametrize("kind", ["transformers", "timm"])
def test_the_class_head_learns_from_the_labels_and_the_distillation_head_from_the_teacher(tmp_path, kind):
    trainer = _trainer(tmp_path, kind)
    trainer.model.train()
    inputs = _batch()
    teacher_outputs = trainer.teacher(inputs, epoch=0.0)
    batch = trainer._distill_batch(inputs, teacher_outputs)
    _, terms = trainer.model(**trainer.task.model_inputs(inputs), distill=(teacher_outputs, batch))
    named = [(name, p) for name, p in trainer.student.named_parameters() if p.requires_grad]
    grads = {}
    for term in ("ce", "loss"):
        found = torch.autograd.grad(terms[term], [p for _, p in named], allow_unused=True, retain_graph=True)
        grads[term] = {name: g is not None and bool(g.abs().sum() > 0) for (name, _), g in zip(named, found)}
    class_head, distillation_head = HEADS[kind]
    for name, _ in named:
        reached = (grads["ce"][name], grads["loss"][name])
        if name.startswith(class_head):
            assert reached == (True, False), name
        elif name.startswith(distillation_head):
            assert reached == (False, True), name
        elif "blocks.1." in name or "layer.1." in name:  # the shared body learns from both
            assert reached == (True, True), name
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("deit")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("validation", 2)):
        for name in ("a", "b", "c"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                PILImage.fromarray(array).save(root / "data" / split / name / f"{i}.png")
    paths = {"data": str(root / "data")}
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    models = {"teacher": tiny_resnet(3, wide=True, seed=2), "transformers": tiny_deit_with_teacher(3, seed=1),
              "timm": tiny_timm_distilled_deit(3, seed=1), "resnet": tiny_resnet(3, seed=1)}  # fmt: skip
    for name, model in models.items():
        model.save_pretrained(root / name)
        if name != "timm":
            processor.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def _argv(setup: dict, student: str, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", setup["data"], "--student", student, "--teacher", setup["teacher"], "--loss", "deit",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "6", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        "--disable_tqdm", "true", "--logging_steps", "1", "--evaluate_teacher", "false", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["transformers", "timm"])
def test_the_saved_student_predicts_with_the_mean_of_both_heads(tmp_path, run_setup, kind):
    out = tmp_path / "run"
    metrics = run_image_distill.main(_argv(run_setup, run_setup[kind], out, "--mixup", "0.8", "--cutmix", "1.0"))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    for entry in [e for e in state["log_history"] if "loss" in e]:
        assert entry["loss"] == pytest.approx(entry["distill/ce"] + entry["distill/loss"], rel=1e-4)
        assert entry["distill/ce"] == pytest.approx(0.5 * entry["distill/base"], rel=1e-4)
    before = AutoModelForImageClassification.from_pretrained(run_setup[kind]).state_dict()
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    after = model.state_dict()
    for head in HEADS[kind]:  # both heads trained
        name = head + "weight"
        assert not torch.equal(before[name], after[name]), name
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        if kind == "transformers":
            heads = model(pixel_values=pixels)
            cls_logits, distillation_logits = heads.cls_logits, heads.distillation_logits
        else:
            net = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
            tokens = net.forward_features(pixels)
            cls_logits, distillation_logits = net.head(tokens[:, 0]), net.head_dist(tokens[:, 1])
            torch.testing.assert_close(net(pixels), logits)  # timm's own loader predicts the same
    torch.testing.assert_close(logits, (cls_logits + distillation_logits) / 2)
    classifier = pipeline("image-classification", model=str(out), device="cpu")
    image = PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    top = classifier(image, top_k=1)[0]
    inputs = classifier.image_processor(images=image, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)[0]
    assert top["label"] == model.config.id2label[int(probabilities.argmax())]
    assert top["score"] == pytest.approx(float(probabilities.max()), rel=1e-5)
    card = (out / "README.md").read_text()
    objective = "1.0 × (1 − alpha) × CE(class head, labels) + 1.0 × alpha × DEIT(distillation head, teacher)"
    assert f"`loss = {objective}`" in card
    assert "`logits` is the mean of the class head and the distillation head" in card
    assert "mean of the class head and the distillation head, the prediction scored above" in card


@pytest.mark.parametrize("student", ["resnet", "deit_tiny_patch16_224"])
def test_a_student_without_a_distillation_head_is_refused_before_anything_loads(
    tmp_path, run_setup, student, monkeypatch
):
    name = run_setup.get(student, student)
    argv = _argv(run_setup, name, tmp_path / "run", "--student_pretrained", str(not student.startswith("deit")))
    # The refusal is read from the student's config, before the data or any weights load.
    monkeypatch.setattr(run_image_distill, "data_builder", lambda *a, **k: pytest.fail("the data were read"))
    with pytest.raises(UsageError, match=r"--loss deit .* has no distillation head: pass one \(transformers' DeiT"):
        run_image_distill.main(argv)
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, distill_loss="deit")
    with pytest.raises(UsageError, match=r"student \(ResNetForImageClassification\) has no distillation head"):
        DistillationTrainer(model=tiny_resnet(NUM_CLASSES), teacher_model="no/such-teacher", args=args)


def test_which_models_have_a_distillation_head():
    assert has_distillation_head(tiny_deit_with_teacher()) and has_distillation_head(tiny_timm_distilled_deit())
    assert not has_distillation_head(tiny_resnet())
    assert config_has_distillation_head({"architectures": ["DeiTForImageClassificationWithTeacher"]})
    assert config_has_distillation_head({"architectures": ["LevitForImageClassificationWithTeacher"]})
    assert not config_has_distillation_head({"architectures": ["DeiTForImageClassification"]})
    assert config_has_distillation_head({"architecture": "deit_base_distilled_patch16_224"})
    assert config_has_distillation_head({"model_type": "timm_wrapper"}, "deit_small_distilled_patch16_224")
    assert not config_has_distillation_head({"model_type": "timm_wrapper"}, "deit_small_patch16_224")
    # Smoke mode stands a tiny DeiT with both heads in for a distilled DeiT from the Hub.
    folder, pretrained = smoke_model_name("facebook/deit-tiny-distilled-patch16-224", 10, 32)
    config = json.loads((Path(folder) / "config.json").read_text())
    assert pretrained and config["architectures"] == ["DeiTForImageClassificationWithTeacher"]
