"""`hfkd distill` on object detection: the task from the models, the data from a save_to_disk folder of the
`run_object_detection.py` layout, the student's and the teacher's COCO metrics in their own files, a card, and a
student that loads in `pipeline("object-detection")`; bad input refused before training."""

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image as PILImage
from transformers import DetrForObjectDetection, DetrImageProcessor, ResNetConfig, ResNetForImageClassification

from hfkd.tasks.detection.demo import load_demo_detection_scenes
from hfkd.utils.errors import UsageError

from .test_distill import tiny_detr

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples"))
from run_image_distill import main  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    scenes, names = load_demo_detection_scenes(train_scenes=16, eval_scenes=6, seed=1, canvas=64)
    scenes.save_to_disk(root / "data")
    for role, seed, width in (("teacher", 0, 48), ("student", 1, 32)):
        config = tiny_detr(seed, width).config
        config.num_labels, config.id2label = len(names), dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        DetrForObjectDetection(config).save_pretrained(root / role)
        DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(root / role)
    return root, names


def _argv(root, out, *extra):
    return [
        "--student", str(root / "student"), "--teacher", str(root / "teacher"), "--dataset", str(root / "data"),
        "--image_size", "64", "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--learning_rate", "1e-4", "--report_to", "none", "--use_cpu",
        "--logging_steps", "1", "--disable_tqdm", "true", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def test_the_script_distils_a_detr_student(setup, tmp_path):
    from transformers import pipeline

    root, names = setup
    out = tmp_path / "run"
    metrics = main(_argv(root, out, "--loss", "dist"))
    student = json.loads((out / "eval_results.json").read_text())
    teacher = json.loads((out / "teacher_eval_results.json").read_text())
    assert metrics["eval_map"] == student["eval_map"] and 0.0 <= student["eval_map"] <= 1.0
    assert not any(key.startswith("teacher_") for key in student)  # never the teacher's numbers as the student's
    assert {"teacher_eval_map", "teacher_eval_map_50", "teacher_eval_map_75"} <= set(teacher)
    config = json.loads((out / "distill_config.json").read_text())
    assert config["task"] == "object-detection" and config["data"]["image_size"] == 64
    card = (out / "README.md").read_text()
    assert "pipeline_tag: object-detection" in card and "× detector loss + 1.0 × DIST" in card
    assert "huggingface.co/datasets" not in card  # the composed scenes are on no Hub page
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "distill/box_giou" in entry]
    assert len(logged) == 2
    detector = pipeline("object-detection", model=str(out))
    found = detector(PILImage.new("RGB", (64, 64)), threshold=0.0)
    assert found and {d["label"] for d in found} <= set(names)
    assert DetrForObjectDetection.from_pretrained(out).config.id2label == dict(enumerate(names))


def test_a_box_outside_its_image_is_named_before_training(setup, tmp_path):
    from datasets import load_from_disk

    root, _ = setup
    data = load_from_disk(str(root / "data"))
    rows = data["train"].to_dict()
    rows["objects"][3] = {**rows["objects"][3], "bbox": [[50.0, 10.0, 30.0, 10.0]], "category": [1], "area": [300.0],
                          "id": [0]}  # fmt: skip
    data["train"] = data["train"].from_dict(rows, features=data["train"].features)
    data.save_to_disk(str(tmp_path / "bad"))
    argv = _argv(root, tmp_path / "run", "--loss", "kd")
    argv[argv.index("--dataset") + 1] = str(tmp_path / "bad")
    with pytest.raises(UsageError, match=r"train: row 3.*object 0"):
        main(argv)
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")


def test_a_classifier_is_refused_for_detection_before_its_weights_load(setup, tmp_path):
    root, _ = setup
    classifier = tmp_path / "classifier"
    ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)).save_pretrained(
        classifier
    )
    argv = _argv(root, tmp_path / "run", "--loss", "kd")
    argv[argv.index("--teacher") + 1] = str(classifier)
    with pytest.raises(UsageError, match="do different tasks"):
        main(argv)
    with pytest.raises(UsageError, match="--loss dkd|serves image-classification, not object-detection"):
        main(_argv(root, tmp_path / "run", "--loss", "dkd"))
