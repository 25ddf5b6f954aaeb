"""Label-free distillation through DistillationTrainer: a backbone student learns a foundation model's features
(each teacher kind, the student at another resolution), what trains and what does not, evaluation by k-NN and loss,
and the saved backbone that reloads alone."""

import os
import re

import pytest
import timm
import torch
from datasets import Dataset
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import AutoModel, ConvNextImageProcessor, ResNetBackbone

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.models.embeddings import read_image_features
from hfkd.models.loading import load_image_classifier

from .tiny import STUDENT_SIZE, TEACHER_SIZE, tiny_resnet_backbone, tiny_teacher, tiny_timm_backbone


def _data(count: int, labels: bool, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    columns = {
        "pixel_values": torch.randn(count, 3, STUDENT_SIZE, STUDENT_SIZE, generator=g).numpy(),
        "teacher_pixel_values": torch.randn(count, 3, TEACHER_SIZE, TEACHER_SIZE, generator=g).numpy(),
    }
    if labels:
        columns["labels"] = [i % 2 for i in range(count)]
    return Dataset.from_dict(columns)


def _args(tmp_path, **changes) -> DistillationArguments:
    settings = dict(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-2, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
        distill_loss="embed", distill_feature_loss="dense",
    )  # fmt: skip
    return DistillationArguments(**{**settings, **changes})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_registers", "clip", "siglip"])
def test_one_step_trains_student_and_projections_only(kind, tmp_path):
    student, teacher = tiny_resnet_backbone(), tiny_teacher(kind)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path), train_dataset=_data(8, labels=False),
        eval_dataset=_data(6, labels=True, seed=1),
    )  # fmt: skip
    assert trainer.task.name == "image-feature-extraction"  # read from the backbones
    loss = trainer.distill_loss
    # The student's 16 channels (a 6 x 6 map at 48 px) -> the teacher's 24 (a 4 x 4 grid at 32 px).
    assert tuple(loss.inner.projection.weight.shape) == (24, 16)
    assert tuple(loss.feature.projection.weight.shape) == (24, 16, 1, 1)
    before = {"student": _snapshot(student), "teacher": _snapshot(teacher), "loss": _snapshot(loss)}
    trainer.train()
    for role, module in (("student", student), ("loss", loss)):
        changed = [k for k, v in module.state_dict().items() if not torch.equal(v, before[role][k])]
        assert changed, role
    assert all(torch.equal(v, before["teacher"][k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    logged = trainer.state.log_history[0]
    assert {"distill/embed", "distill/dense"} <= set(logged) and "distill/ce" not in logged
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_knn_top1"] <= 1.0 and metrics["eval_loss"] > 0
    assert set(trainer.evaluate_teacher()) == {"teacher_eval_knn_top1"}


def test_unlabelled_evaluation_reports_the_loss_and_the_saved_backbone_reloads_alone(tmp_path, monkeypatch):
    student, teacher = tiny_resnet_backbone(), tiny_teacher("dinov2")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, distill_feature_loss=None),
        train_dataset=_data(8, labels=False), eval_dataset=_data(4, labels=False, seed=1),
        processing_class=ConvNextImageProcessor(size={"shortest_edge": STUDENT_SIZE}),
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_knn_top1" not in metrics
    assert trainer.evaluate_teacher() == {}
    out = tmp_path / "run"
    trainer.save_model()
    assert not (out / "distill_adapters.safetensors").exists()
    assert not any("projection" in key for key in load_file(out / "model.safetensors"))
    pixels = torch.randn(2, 3, STUDENT_SIZE, STUDENT_SIZE, generator=torch.Generator().manual_seed(7))
    student.eval()
    with torch.no_grad():
        expected = read_image_features(student, student(pixel_values=pixels))
        for loaded in (AutoModel.from_pretrained(out), ResNetBackbone.from_pretrained(out)):
            assert type(loaded).__name__ in ("ResNetModel", "ResNetBackbone")
            loaded.eval()
        reloaded = AutoModel.from_pretrained(out).eval()
        got = read_image_features(reloaded, reloaded(pixel_values=pixels))
        stage = ResNetBackbone.from_pretrained(out).eval()(pixels).feature_maps[-1]
    assert torch.equal(got.embedding, expected.embedding) and torch.equal(got.feature_map, expected.feature_map)
    assert torch.equal(stage, expected.feature_map)
    # Fine-tuning starts from it as from any checkpoint: a classifier with a new head.
    classifier = load_image_classifier(str(out), num_labels=3)
    assert classifier(pixel_values=pixels).logits.shape == (2, 3)
    trainer.args.distill_save_projections = True
    trainer.save_model()
    assert set(load_file(out / "distill_adapters.safetensors")) == {"inner.projection.weight", "inner.projection.bias"}
    # The card's snippets run against the folder (named by its folder name, from its parent), the backbone's too.
    trainer.create_model_card(student_metrics=metrics)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "No evaluation results yet." in card
    monkeypatch.chdir(tmp_path)
    PILImage.new("RGB", (60, 50), (10, 200, 90)).save(tmp_path / "image.png")
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2 and "ResNetBackbone.from_pretrained" in snippets[1]
    namespace: dict = {}
    exec(snippets[0].replace("path/to/image.jpg", str(tmp_path / "image.png")), namespace)  # noqa: S102
    assert namespace["embedding"].shape == (1, 16)
    exec(snippets[1], namespace)  # noqa: S102
    assert [tuple(m.shape) for m in namespace["maps"]] == [(1, 16, 28, 28)]


def test_a_timm_student_saves_for_timm_create_model_with_mixup_of_images_only(tmp_path):
    student, teacher = tiny_timm_backbone(), tiny_teacher("dinov2")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_args(tmp_path, distill_mixup=1.0, distill_loss="dense",
                                                         distill_feature_loss="embed"),
        train_dataset=_data(8, labels=True), eval_dataset=_data(4, labels=True, seed=1),
    )  # fmt: skip
    assert trainer.train().training_loss > 0
    trainer.save_model()
    out = str(tmp_path / "run")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.num_classes == 0
    pixels = torch.randn(2, 3, STUDENT_SIZE, STUDENT_SIZE, generator=torch.Generator().manual_seed(3))
    student.eval()
    with torch.no_grad():
        expected = read_image_features(student, student(pixel_values=pixels)).embedding
        assert torch.equal(model(pixels), expected)
        reloaded = AutoModel.from_pretrained(out).eval()
        assert torch.equal(reloaded(pixel_values=pixels).pooler_output, expected)
    classifier = load_image_classifier(out, num_labels=3).eval()
    assert type(classifier).__name__ == "TimmWrapperForImageClassification"
    with torch.no_grad():
        assert torch.equal(classifier.timm_model.forward_features(pixels), model.forward_features(pixels))
    assert os.path.isfile(os.path.join(out, "config.json"))
