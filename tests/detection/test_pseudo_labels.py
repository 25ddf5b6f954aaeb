"""Images without labels in detection (`--labelled_samples`): the teacher's detections above a score become their
targets, for DETR-family and torchvision teachers; the labelled images keep theirs; without a teacher they are
dropped, and an unlabelled image never reaches a student's loss as an image without objects."""

import json

import numpy as np
import pytest
import torch
from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

from hfkd import DistillationTrainer
from hfkd.tasks.detection.data import DetectionTransform
from hfkd.tasks.registry import get_task
from hfkd.utils.errors import UsageError

from .test_distill import NAMES, _args, collate, scenes, tiny_detr


def _task(threshold=0.5):
    return get_task("object-detection", id2label=dict(enumerate(NAMES)), pseudo_label_threshold=threshold)


def test_the_transform_hides_the_boxes_of_unlabelled_rows():
    from PIL import Image

    image = Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8))
    objects = {"bbox": [[5.0, 5.0, 10.0, 20.0]], "category": [1]}
    batch = {"image": [image, image], "objects": [objects, objects], "sample_index": [7, 8]}
    transform = DetectionTransform(num_labels=3, image_size=32, unlabelled={8}, flip=False)
    labels = transform(batch)["labels"]
    assert labels[0]["class_labels"].tolist() == [1] and "unlabelled" not in labels[0]
    assert labels[1]["unlabelled"] is True and labels[1]["boxes"].shape == (0, 4)
    evaluation = DetectionTransform(num_labels=3, image_size=32, unlabelled={8}, train=False)
    assert evaluation(batch)["labels"][1]["class_labels"].tolist() == [1]  # evaluation always scores every box


def test_a_detr_teachers_confident_queries_label_the_unlabelled_images():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 8, len(NAMES) + 1, generator=g) * 3
    boxes = torch.rand(2, 8, 4, generator=g) * 0.5 + 0.1
    teacher = DetrObjectDetectionOutput(logits=logits, pred_boxes=boxes)
    batch = collate(scenes(2, seed=3))
    batch["labels"][1] = {**batch["labels"][1], "unlabelled": True}
    filled = _task(0.4).teacher_labels(batch, teacher)["labels"]
    assert filled[0] is batch["labels"][0]  # a labelled image keeps its boxes
    # Reference from DETR's post-processing rule: softmax, no-object column dropped, the best class per query.
    probs = logits[1].softmax(-1)[:, :-1]
    scores, classes = probs.max(-1)
    keep = scores > 0.4
    assert 0 < int(keep.sum()) < 8
    assert torch.equal(filled[1]["class_labels"], classes[keep])
    assert torch.equal(filled[1]["boxes"], boxes[1][keep])
    assert filled[1]["pseudo"] is True and "unlabelled" not in filled[1]
    assert torch.equal(filled[1]["orig_size"], batch["labels"][1]["orig_size"])


def test_a_torchvision_teachers_detections_label_the_unlabelled_images():
    table = torch.full((1, 100, 6), -1.0)
    table[0, :3] = torch.tensor(
        [[0.1, 0.2, 0.5, 0.6, 0.9, 2.0], [0.0, 0.0, 0.4, 0.2, 0.7, 0.0], [0.3, 0.3, 0.6, 0.9, 0.3, 1.0]]
    )
    teacher = {"detections": table}

    class Output(dict):
        detections = table

    labels = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "unlabelled": True}]
    filled = _task(0.5).teacher_labels({"labels": labels}, Output(teacher))["labels"][0]
    assert filled["class_labels"].tolist() == [2, 0]
    torch.testing.assert_close(filled["boxes"], torch.tensor([[0.3, 0.4, 0.4, 0.4], [0.2, 0.1, 0.4, 0.2]]))


def test_the_trainer_trains_the_student_on_the_teachers_targets(tmp_path):
    teacher = tiny_detr(0, width=48).eval()
    trainer = DistillationTrainer(
        model=tiny_detr(1), teacher_model=teacher, args=_args(tmp_path, "kd", distill_pseudo_label_threshold=0.0),
        train_dataset=scenes(4), data_collator=collate,
    )  # fmt: skip
    batch = collate(scenes(2, seed=2))
    seen = []
    student = trainer.model.student
    original = student.forward
    student.forward = lambda *args, **kwargs: (seen.append(kwargs.get("labels")), original(*args, **kwargs))[1]
    batch["labels"][1] = {**batch["labels"][1], "unlabelled": True}
    trainer.compute_loss(trainer.model.train(), batch)
    # Threshold 0: every one of the teacher's 8 queries is a target of the unlabelled image.
    assert len(seen[0][1]["class_labels"]) == 8 and seen[0][1]["pseudo"]
    assert torch.equal(seen[0][0]["class_labels"], batch["labels"][0]["class_labels"])


def test_an_unlabelled_image_without_a_teacher_is_refused():
    labels = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4), "unlabelled": True}]
    with pytest.raises(UsageError, match="needs a teacher"):
        _task().task_loss({"loss": torch.zeros(())}, labels, None)


@pytest.mark.slow
def test_the_script_keeps_the_boxes_of_labelled_samples_images(tmp_path):
    from hfkd.tasks.detection.demo import load_demo_detection_scenes

    from .test_torchvision import _run

    scenes_data, _ = load_demo_detection_scenes(train_scenes=8, eval_scenes=4, seed=1, canvas=64)
    scenes_data.save_to_disk(tmp_path / "data")
    _run(tmp_path, tmp_path / "teacher", "--student", "fasterrcnn_resnet18_fpn", "--loss", "ce",
         "--labelled_samples", "3")  # fmt: skip
    record = json.loads((tmp_path / "teacher" / "distill_config.json").read_text())
    assert record["data"]["train_images"] == 3  # no teacher: the unlabelled images are dropped
    _run(tmp_path, tmp_path / "student", "--student", "fasterrcnn_resnet18_fpn", "--teacher",
         str(tmp_path / "teacher"), "--loss", "dist", "--labelled_samples", "3",
         "--distill_pseudo_label_threshold", "0.0")  # fmt: skip
    record = json.loads((tmp_path / "student" / "distill_config.json").read_text())
    assert record["data"]["train_images"] == 8 and record["data"]["labelled_images"] == 3
