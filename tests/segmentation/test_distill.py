"""Segmentation through the trainer and the script: a SegFormer student distilled from a SegFormer teacher on the
demo scenes, what lands on disk, and what is refused before anything loads."""

import json
import math
import os

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from PIL import Image as PILImage
from transformers import (
    AutoModelForSemanticSegmentation,
    ResNetConfig,
    ResNetForImageClassification,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    pipeline,
)

from examples.run_image_distill import main
from hfkd import DistillationArguments, DistillationTrainer
from hfkd.tasks.segmentation.data import SegmentationCollator
from hfkd.tasks.segmentation.demo import load_demo_scenes
from hfkd.utils.errors import UsageError


def _segformer(hidden: list[int], names: list[str], seed: int) -> SegformerForSemanticSegmentation:
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=hidden,
        num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    return SegformerForSemanticSegmentation(config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmentation")
    scenes, names, _ = load_demo_scenes(train_scenes=24, eval_scenes=6, seed=1)
    scenes.save_to_disk(root / "data")
    (root / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    for role, hidden, seed in (("teacher", [16, 32, 64, 128], 0), ("student", [8, 16, 32, 64], 1)):
        _segformer(hidden, names, seed).save_pretrained(root / role)
        SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / role)
    return root, names


def _argv(root, out, *extra):
    return [
        "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--dataset", str(root / "data"),
        "--id2label", str(root / "id2label.json"), "--crop_size", "48", "48", "--output_dir", str(out),
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "1e-3", "--report_to", "none", "--use_cpu", "--logging_steps", "1",
        "--disable_tqdm", "true", "--save_strategy", "no", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("loss", ["dist", "kd", "cwd"])
def test_the_script_distils_a_segmentation_student(setup, tmp_path, loss):
    root, names = setup
    out = tmp_path / "run"
    metrics = main(_argv(root, out, "--loss", loss))
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and "eval_accuracy" not in metrics
    on_disk = json.loads((out / "eval_results.json").read_text())
    teacher = json.loads((out / "teacher_eval_results.json").read_text())
    assert on_disk["eval_mean_iou"] == metrics["eval_mean_iou"]
    assert {"teacher_eval_mean_iou", "teacher_eval_overall_accuracy", f"teacher_eval_iou_{names[1]}"} <= set(teacher)
    assert not any(key.startswith("eval_") for key in teacher)
    record = json.loads((out / "distill_config.json").read_text())
    assert record["task"] == "semantic-segmentation" and record["data"]["crop_size"] == [48, 48]
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    term = {"dist": "distill/inter", "kd": "distill/kd", "cwd": "distill/cwd"}[loss]
    assert len(logged) == 3 and all(term in e and "distill/ce" in e for e in logged)
    # the student trained, the teacher did not; the student loads as a segmentation model and in the pipeline
    before = SegformerForSemanticSegmentation.from_pretrained(root / "student")
    after = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(after).__name__ == "SegformerForSemanticSegmentation" and after.config.id2label[1] == names[1]
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    segments = pipeline("image-segmentation", model=str(out))(PILImage.new("RGB", (64, 64)))
    assert {s["label"] for s in segments} <= set(names)


def test_a_reference_network_student_learns_from_a_segformer_teacher(setup, tmp_path):
    """DeepLabV3-R18 (output stride 8) and SegFormer (stride 4): the student's logits are resized to the teacher's."""
    root, _ = setup
    out = tmp_path / "run"
    argv = _argv(root, out, "--loss", "kd", "--student_pretrained", "false")
    argv[argv.index("--student") + 1] = "deeplabv3-resnet18"
    metrics = main(argv)
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hfkd_smp" and config["architecture"] == "DeepLabV3"
    assert type(AutoModelForSemanticSegmentation.from_pretrained(out)).__name__ == "SmpForSemanticSegmentation"


def test_models_of_another_task_are_refused_before_anything_loads(setup, tmp_path):
    root, _ = setup
    classifier = tmp_path / "classifier"
    ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], num_labels=11)).save_pretrained(
        classifier
    )
    out = tmp_path / "run"
    argv = _argv(root, out, "--loss", "kd", "--task", "semantic-segmentation")
    argv[argv.index("--student") + 1] = str(classifier)
    refused = (r"semantic-segmentation, but .*classifier' is an image-classification model.*"
               r"\(hfkd never trains an image-classification model for semantic-segmentation\)")  # fmt: skip
    with pytest.raises(UsageError, match=refused):
        main(argv)
    argv = _argv(root, out, "--loss", "kd")
    argv[argv.index("--teacher") + 1] = str(classifier)
    with pytest.raises(UsageError, match="do different tasks"):
        main(argv)
    with pytest.raises(UsageError, match="serves image-classification, object-detection, not semantic-segmentation"):
        main(_argv(root, out, "--loss", "dkd"))
    with pytest.raises(UsageError, match="mix image classification batches"):
        main(_argv(root, out, "--loss", "kd", "--task", "semantic-segmentation", "--mixup", "0.8"))
    assert not os.path.exists(out / "model.safetensors")


def test_a_mask_classification_teacher_is_refused_by_name_before_its_weights_load(setup, tmp_path):
    from transformers import Mask2FormerConfig

    root, _ = setup
    config = Mask2FormerConfig(num_labels=11)
    config.architectures = ["Mask2FormerForUniversalSegmentation"]
    config.save_pretrained(tmp_path / "mask2former")  # a config and no weights: the refusal must not need them
    argv = _argv(root, tmp_path / "run", "--loss", "kd")
    argv[argv.index("--teacher") + 1] = str(tmp_path / "mask2former")
    with pytest.raises(UsageError, match=r"mask2former' is a Mask2FormerForUniversalSegmentation .* does not distil"):
        main(argv)
    assert not (tmp_path / "run").exists()


def test_a_mask_of_another_size_is_named_before_training(setup, tmp_path):
    root, names = setup
    from datasets import load_from_disk

    data = load_from_disk(str(root / "data"))
    bad = data["train"].map(
        lambda row, i: {"label": row["label"].resize((10, 10)) if i == 5 else row["label"]}, with_indices=True
    )
    data["train"] = bad
    data.save_to_disk(tmp_path / "bad")
    argv = _argv(root, tmp_path / "run", "--loss", "kd")
    argv[argv.index("--dataset") + 1] = str(tmp_path / "bad")
    with pytest.raises(UsageError, match=r"train: the mask of row 5 is 10x10 pixels, its image 64x64"):
        main(argv)


FEATURE_LOSSES = ["fitnet", "at", "nst", "sp", "kdsvd", "vid", "pkt", "rkd", "reviewkd"]


@pytest.mark.parametrize("loss", FEATURE_LOSSES)
def test_feature_losses_read_segmentation_backbones(setup, tmp_path, loss):
    """Feature losses work on a segmentation backbone's hidden states as on a classifier's: two trainer steps of a
    SegFormer student whose teacher is a wider SegFormer, each term logged finite, the teacher untouched."""
    root, names = setup
    data = load_from_disk(str(root / "data"))["train"].select(range(8))
    rows = {"pixel_values": [], "labels": []}
    for row in data:
        rows["pixel_values"].append(np.asarray(row["image"], np.float32).transpose(2, 0, 1) / 255.0)
        rows["labels"].append(np.asarray(row["label"], np.int64))
    train = Dataset.from_dict(rows).with_format("torch")
    teacher = SegformerForSemanticSegmentation.from_pretrained(root / "teacher").eval()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4, max_steps=2,
        logging_steps=1, save_strategy="no", distill_loss=loss, disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=SegformerForSemanticSegmentation.from_pretrained(root / "student"), teacher_model=teacher, args=args,
        train_dataset=train, data_collator=SegmentationCollator(),
    )  # fmt: skip
    assert trainer.task.name == "semantic-segmentation"
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 2
    assert all(math.isfinite(e["distill/loss"]) and math.isfinite(e["distill/ce"]) for e in logged)
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
