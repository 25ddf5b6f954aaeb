"""torchvision's Faster R-CNN and RetinaNet as hfkd detectors: the wrapper against torchvision's own forward (losses,
detections), saving and reloading, and each distillation form against a second implementation written here from the
references' code (MasKD's DIST on RoI rows / sigmoid levels, mimic's MSE through 1×1 convs, MDistiller's DKD on RoIs
with background)."""

import dataclasses

import pytest
import torch
from torch import nn
from transformers import AutoModelForObjectDetection

from hfkd.losses import create_loss
from hfkd.losses.base import DistillBatch
from hfkd.losses.dkd import dkd_loss
from hfkd.models.torchvision_detection import (
    TorchvisionDetectionConfig,
    TorchvisionForObjectDetection,
    image_sizes,
    torchvision_detector,
)
from hfkd.tasks.detection.torchvision_distill import TorchvisionDetectorDistillation, check_detector_losses
from hfkd.utils.errors import UsageError

NAMES = {0: "shirt", 1: "bag", 2: "boot"}


def detector(network: str, seed: int = 0, **config) -> TorchvisionForObjectDetection:
    torch.manual_seed(seed)
    return torchvision_detector(network, id2label=NAMES, pretrained=False, role="student", min_size=64, max_size=96,
                                **config)  # fmt: skip


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, :, 80:] = 0  # the second image is 64 x 80, padded on the right
    pixels[1, :, :, 80:] = 0
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.6, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.6, 0.3, 0.5]])},
    ]
    return pixels, mask, labels


class Identity(nn.Module):
    """torchvision's GeneralizedRCNNTransform without resizing or normalising (hfkd's data did both)."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = sizes

    def forward(self, images, targets=None):
        from torchvision.models.detection.image_list import ImageList

        return ImageList(torch.stack(images), self.sizes), targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def torchvision_reference(model, pixels, mask):
    """A copy of the wrapped torchvision detector whose transform passes the batch through as it is."""
    import copy

    reference = copy.deepcopy(model.detector)
    reference.transform = Identity(image_sizes(pixels, mask))
    return reference


@pytest.mark.parametrize("network", ["fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn"])
def test_training_losses_are_torchvisions_own(network):
    model = detector(network).train()
    pixels, mask, labels = batch()
    targets = model.targets(labels, pixels.shape[-2:])
    # Boxes: normalised (cx, cy, w, h) of the padded 64 x 96 frame as pixel corners; classes as columns 1..3.
    assert torch.allclose(targets[0]["boxes"][0], torch.tensor([19.2, 9.6, 38.4, 28.8]))
    assert targets[0]["labels"].tolist() == [1, 3] and targets[1]["labels"].tolist() == [2]
    reference = torchvision_reference(model, pixels, mask).train()
    torch.manual_seed(3)
    ours = model(pixels, mask, labels).loss_dict
    torch.manual_seed(3)
    theirs = reference(list(pixels), targets)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name]), name


@pytest.mark.parametrize("network", ["fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn"])
def test_detections_are_torchvisions_relative_to_the_padded_frame(network):
    model = detector(network)
    if network.startswith("retinanet"):  # random init scores below torchvision's 0.05 threshold: lift the prior
        nn.init.constant_(model.detector.head.classification_head.cls_logits.bias, 0.0)
    model.eval()
    pixels, mask, _ = batch()
    table = model(pixels, mask).detections
    with torch.no_grad():
        found = torchvision_reference(model, pixels, mask).eval()(list(pixels))
    scale = torch.tensor([96, 64, 96, 64])
    for i, image in enumerate(found):
        keep = image["labels"] > 0  # the background column detects nothing (a RetinaNet scores it too)
        boxes, classes = image["boxes"][keep], image["labels"][keep] - 1
        count = min(len(boxes), 100)
        assert count > 0
        assert torch.allclose(table[i, :count, :4] * scale, boxes[:count], atol=1e-4)
        assert torch.equal(table[i, :count, 5].long(), classes[:count])
        assert (table[i, count:] == -1).all()


def test_a_saved_detector_reloads_with_the_auto_class(tmp_path):
    model = detector("fasterrcnn_resnet18_fpn").eval()
    pixels, mask, _ = batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(again) is TorchvisionForObjectDetection and again.config.id2label == NAMES
    assert isinstance(again.detector.backbone.body.bn1, nn.BatchNorm2d)  # built as it was trained
    assert torch.equal(model(pixels, mask).detections, again(pixels, mask).detections)


def test_a_coco_teacher_takes_its_classes_by_name_and_refuses_others():
    # The names are checked before any download (COCO's category list is in torchvision's weights metadata).
    with pytest.raises(
        UsageError, match="COCO weights of 'fasterrcnn_resnet50_fpn' have no class 'shirt', 'bag', 'boot'"
    ):
        torchvision_detector("fasterrcnn_resnet50_fpn", id2label=NAMES, pretrained=True, role="teacher")
    with pytest.raises(UsageError, match="torchvision has no COCO weights for 'fasterrcnn_resnet18_fpn'"):
        torchvision_detector("fasterrcnn_resnet18_fpn", id2label=NAMES, pretrained=True, role="teacher")
    # A COCO-sized head: the data's classes are its columns by name, background first.
    config = TorchvisionDetectionConfig(network="fasterrcnn_resnet18_fpn", class_columns=[18, 31, 1],
                                        num_detector_classes=91, id2label=NAMES, min_size=64, max_size=96)  # fmt: skip
    model = TorchvisionForObjectDetection(config).train()
    pixels, mask, labels = batch()
    assert model.targets(labels, (64, 96))[0]["labels"].tolist() == [18, 1]
    out = model(pixels, mask, labels)
    assert out.logits.shape[1] == 4 and set(out.roi_labels.tolist()) <= {0, 1, 2, 3}


def _step(student, teacher, loss, feature=None):
    pixels, mask, labels = batch()
    student.train()
    with torch.no_grad():
        teacher_output = teacher.eval()(pixels, mask)
    distiller = TorchvisionDetectorDistillation(create_loss(loss, **_no_warmup(loss)), student, teacher, feature)
    student_output = student(pixels, mask, labels)
    return distiller, student_output, teacher_output, distiller(student_output, teacher_output, DistillBatch())


def _no_warmup(loss):
    return {"warmup_epochs": 0} if loss == "dkd" else {}


def test_faster_rcnn_rows_pair_the_teachers_box_head_on_the_students_rois():
    student, teacher = detector("fasterrcnn_resnet18_fpn", 0), detector("fasterrcnn_resnet34_fpn", 1)
    _, s, t, out = _step(student, teacher, "dkd")
    # The teacher's head, run here by hand on the student's sampled RoIs over the teacher's own features.
    heads = teacher.detector.roi_heads
    features = dict(zip(["0", "1", "2", "3", "pool"], t.neck_features))
    with torch.no_grad():
        logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, s.proposals, s.image_sizes)))
    assert s.logits.shape == logits.shape == (len(s.roi_labels), 4)
    assert (s.roi_labels == 0).any() and (s.roi_labels > 0).any()  # background rows included
    expected = dkd_loss(s.logits, logits, s.roi_labels, alpha=1.0, beta=8.0, temperature=4.0)
    assert torch.allclose(out["loss"], expected)
    # Identical models (frozen BatchNorm: the same in training and evaluation) pair identical rows: nothing to distil.
    twins = [detector("fasterrcnn_resnet18_fpn", 0, frozen_batch_norm=True) for _ in range(2)]
    _, s, t, out = _step(*twins, "dist")
    assert out["loss"].abs() < 1e-5


def _pearson_relations(student, teacher):
    """DIST's 1 − mean Pearson over rows (inter) plus over columns (intra), from the equation."""

    def one_minus_pearson(a, b):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return 1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)).mean()

    return one_minus_pearson(student, teacher) + one_minus_pearson(student.T, teacher.T)


def test_retinanet_dist_is_sigmoid_dist_per_level_summed():
    student, teacher = detector("retinanet_resnet18_fpn", 0), detector("retinanet_resnet34_fpn", 1)
    _, s, t, out = _step(student, teacher, "dist")
    anchors = student.detector.anchor_generator.num_anchors_per_location()[0]
    expected, start = 0.0, 0
    for level in s.neck_features:  # torchvision's concatenated (B, H·W·A, 1 + K) rows, cut back per level
        h, w = level.shape[-2:]
        count = h * w * anchors
        rows = []
        for output in (s, t):
            chunk = output.logits[:, start : start + count, 1:].reshape(2, h, w, anchors * 3)
            rows.append(torch.sigmoid(chunk.reshape(-1, anchors * 3)))
        expected, start = expected + _pearson_relations(*rows), start + count
    assert torch.allclose(out["loss"], expected, atol=1e-5)


def test_mimic_passes_the_students_levels_through_its_own_convolutions():
    student, teacher = detector("fasterrcnn_resnet18_fpn", 0), detector("fasterrcnn_resnet34_fpn", 1)
    distiller, s, t, out = _step(student, teacher, "dist", create_loss("mimic"))
    assert len(distiller.adapters) == 5 and distiller.adapters[0].kernel_size == (1, 1)
    expected = sum(((conv(a) - b) ** 2).mean() for conv, a, b in zip(distiller.adapters, s.neck_features,
                                                                      t.neck_features))  # fmt: skip
    assert torch.allclose(out["mimic"], expected)
    out["loss"].backward()
    assert all(p.grad is not None for p in distiller.adapters.parameters())
    assert student.detector.roi_heads.box_predictor.cls_score.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_losses_are_refused_by_detector_family():
    with pytest.raises(UsageError, match="--loss kd has no form for RetinaNet students: pass one of dist, mimic"):
        check_detector_losses("kd", None, "retinanet", "retinanet")
    with pytest.raises(UsageError, match="A RetinaNet teacher and a Faster R-CNN student"):
        check_detector_losses("dist", None, "faster_rcnn", "retinanet")
    check_detector_losses("pkd", None, "faster_rcnn", "retinanet")  # a neck loss pairs FPN levels of both
    with pytest.raises(UsageError, match="--feature_loss mimic distils an FPN neck; DETR-family students"):
        check_detector_losses("kd", "mimic", "detr", "detr")


def test_evaluation_scales_detections_to_the_original_pixels():
    from hfkd.tasks.detection.task import frame_sizes, references_table, scaled_detections

    _, _, labels = batch()
    labels = [{**label, "orig_size": torch.tensor([128, 160]), "size": torch.tensor([64, 96]),
               "unpadded_size": torch.tensor([64, 80])} for label in labels]  # fmt: skip
    sizes = frame_sizes(labels)
    references = references_table(labels, sizes)
    # A detection exactly on each labelled box (in the padded frame's relative corners) lands on its reference.
    table = torch.full((2, 100, 6), -1.0)
    for i, label in enumerate(labels):
        cx, cy, w, h = label["boxes"].unbind(-1)
        k = len(cx)
        table[i, :k, :4] = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        table[i, :k, 4], table[i, :k, 5] = 0.9, label["class_labels"].float()
    scaled = scaled_detections(table, sizes)
    for i in range(2):
        k = int((references[i, :, 4] >= 0).sum())
        assert torch.allclose(scaled[i, :k, :4], references[i, :k, :4], atol=1e-4)
        assert (scaled[i, k:] == -1).all()
    assert dataclasses.is_dataclass(DistillBatch())


@pytest.fixture(scope="module")
def scenes_folder(tmp_path_factory):
    from hfkd.tasks.detection.demo import load_demo_detection_scenes

    root = tmp_path_factory.mktemp("torchvision")
    scenes, names = load_demo_detection_scenes(train_scenes=8, eval_scenes=4, seed=1, canvas=64)
    scenes.save_to_disk(root / "data")
    return root, names


def _run(root, out, *extra):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from run_image_distill import main

    return main([
        "--dataset", str(root / "data"), "--image_size", "64", "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
        "--report_to", "none", "--use_cpu", "--logging_steps", "1", "--disable_tqdm", "true", "--save_strategy", "no",
        "--student_pretrained", "false", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_the_script_distils_a_faster_rcnn_with_dist_and_mimic(scenes_folder, tmp_path):
    import json

    root, names = scenes_folder
    _run(root, tmp_path / "teacher", "--student", "fasterrcnn_resnet34_fpn", "--loss", "ce")
    out = tmp_path / "student"
    metrics = _run(root, out, "--student", "fasterrcnn_resnet18_fpn", "--teacher", str(tmp_path / "teacher"),
                   "--loss", "dist", "--feature_loss", "mimic")  # fmt: skip
    student = json.loads((out / "eval_results.json").read_text())
    teacher = json.loads((out / "teacher_eval_results.json").read_text())
    assert metrics["eval_map"] == student["eval_map"] and "teacher_eval_map" in teacher
    assert not any(key.startswith("teacher_") for key in student)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "distill/mimic" in entry]
    assert len(logged) == 2 and all("distill/inter" in entry for entry in logged)
    config = json.loads((out / "distill_config.json").read_text())
    assert config["task"] == "object-detection" and config["distill_loss_kwargs"]["feature_loss"] == "mimic"
    card = (out / "README.md").read_text()
    assert "loss = 1.0 × detector loss + 1.0 × (DIST + MIMIC)" in card
    assert "import hfkd.models.torchvision_detection" in card and 'pipeline("object-detection"' not in card
    again = AutoModelForObjectDetection.from_pretrained(out)
    assert type(again) is TorchvisionForObjectDetection and again.config.id2label == dict(enumerate(names))
    assert again.config.min_size == 64  # torchvision's own preprocessing resizes as the run did


@pytest.mark.parametrize(
    ("student", "teacher", "extra", "message"),
    [
        ("retinanet_resnet18_fpn", "retinanet_resnet34_fpn", ["--loss", "kd"],
         "--loss kd has no form for RetinaNet students: pass one of dist"),
        ("fasterrcnn_resnet18_fpn", "retinanet_resnet34_fpn", ["--loss", "dist"],
         "A RetinaNet teacher and a Faster R-CNN student"),
        ("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", ["--loss", "dist", "--feature_loss", "fitnet"],
         "--feature_loss 'fitnet' is not a neck loss: pass one of mimic, pkd, cwd"),
    ],
)  # fmt: skip
def test_a_loss_the_detectors_cannot_take_is_refused_before_weights_load(
    scenes_folder, tmp_path, monkeypatch, student, teacher, extra, message
):
    import hfkd.commands.detection as detection

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(detection, "torchvision_detector", never)
    root, _ = scenes_folder
    with pytest.raises(UsageError, match=message):
        _run(
            root, tmp_path / "out", "--student", student, "--teacher", teacher, "--teacher_pretrained", "false", *extra
        )
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_smoke_mode_runs_a_detection_recipe_offline(tmp_path, monkeypatch):
    """`--smoke` on a COCO recipe's arguments: synthetic boxes of COCO's 80 classes, the teacher folder a recipe
    expects from an earlier run replaced by its network with random weights, a Hub DETR by a tiny random one."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from run_image_distill import main

    monkeypatch.chdir(tmp_path)
    for student, teacher, loss in [
        ("fasterrcnn_resnet18_fpn", "runs/coco/teachers/fasterrcnn_resnet34_fpn", "dkd"),
        ("PekingU/rtdetr_r18vd", "PekingU/rtdetr_r50vd", "kd"),
    ]:
        out = tmp_path / loss
        main(["--smoke", "--task", "object-detection", "--student", student, "--teacher", teacher, "--loss", loss,
              "--dataset", "data/coco", "--output_dir", str(out)])  # fmt: skip
        record = json.loads((out / "distill_config.json").read_text())
        assert record["data"]["source"].startswith("synthetic smoke data") and record["data"]["image_size"] == 64
        assert len(json.loads((out / "config.json").read_text())["id2label"]) == 80
