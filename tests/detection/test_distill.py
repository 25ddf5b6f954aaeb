"""DETR-family detectors through DistillationTrainer: the task read from the student, the model's own matching loss
plus KD or DIST on matched queries, COCO metrics for student and teacher."""

import math

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.losses._detr import detr_distill_loss
from hfkd.utils.errors import UsageError

NAMES = ["shirt", "bag", "shoe"]


def tiny_detr(seed: int, width: int = 32) -> DetrForObjectDetection:
    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1] * 4, out_features=["stage4"])
    config = DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, num_queries=8,
        d_model=width, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_labels=len(NAMES), dropout=0.0,
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )  # fmt: skip
    return DetrForObjectDetection(config)


def scenes(count: int, seed: int = 0) -> list[dict]:
    """Bright rectangles on a dark 48 x 48 canvas, each labelled by its class (0 to 2 per image)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        image = torch.rand(3, 48, 48, generator=g) * 0.1
        classes, boxes = [], []
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            w, h = (int(v) for v in torch.randint(8, 20, (2,), generator=g))
            x, y = int(torch.randint(0, 48 - w, (1,), generator=g)), int(torch.randint(0, 48 - h, (1,), generator=g))
            label = int(torch.randint(0, 3, (1,), generator=g))
            image[label, y : y + h, x : x + w] = 1.0
            classes.append(label)
            boxes.append([(x + w / 2) / 48, (y + h / 2) / 48, w / 48, h / 48])
        labels = {
            "class_labels": torch.tensor(classes, dtype=torch.long), "boxes": torch.tensor(boxes).reshape(-1, 4),
            "orig_size": torch.tensor([48, 48]),
        }  # fmt: skip
        rows.append({"pixel_values": image, "labels": labels})
    return rows


def collate(rows: list[dict]) -> dict:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "labels": [r["labels"] for r in rows]}


def _args(tmp_path, loss: str, **extra) -> DistillationArguments:
    return DistillationArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4,
        per_device_eval_batch_size=3, max_steps=3, logging_steps=1, save_strategy="no", distill_loss=loss,
        disable_tqdm=True, learning_rate=1e-3, remove_unused_columns=False, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("loss", ["kd", "dist"])
def test_a_detr_student_distils_on_matched_queries(tmp_path, loss):
    teacher = tiny_detr(0, width=48).eval()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillationTrainer(
        model=tiny_detr(1), teacher_model=teacher, args=_args(tmp_path, loss, distill_weight=0.5),
        train_dataset=scenes(12), eval_dataset=scenes(7, seed=1), data_collator=collate,
    )  # fmt: skip
    assert trainer.task.name == "object-detection"
    # The loss of a step is the student's own matching loss + 0.5 x the DETR form of the run's loss, whose value is
    # detr_distill_loss on both models' outputs (matching included) with the run's loss's hyperparameters.
    batch = collate(scenes(4, seed=2))
    with torch.no_grad():  # no dropout (config), frozen BatchNorm (DETR's): both forwards see the same student
        total = trainer.compute_loss(trainer.model.train(), batch)
        own = trainer.model.student(pixel_values=batch["pixel_values"], labels=batch["labels"])
        teacher_out = teacher(pixel_values=batch["pixel_values"])
        hparams = {"temperature": 4.0} if loss == "kd" else {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}
        distill = detr_distill_loss(own.logits, own.pred_boxes, teacher_out.logits, teacher_out.pred_boxes,
                                    loss=loss, use_sigmoid=False, **hparams)["loss"]  # fmt: skip
    assert own.logits.shape[-1] == len(NAMES) + 1  # DETR's softmax with a no-object class: use_sigmoid False
    torch.testing.assert_close(total, own.loss + 0.5 * distill, rtol=1e-4, atol=1e-5)

    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3
    for term in ("distill/cls", "distill/box_l1", "distill/box_giou", "distill/no_object", "distill/loss"):
        assert all(math.isfinite(e[term]) for e in logged), term
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())

    metrics = trainer.evaluate()
    teacher_metrics = trainer.evaluate_teacher()
    for key in ("map", "map_50", "map_75"):
        assert 0.0 <= metrics[f"eval_{key}"] <= 1.0 and 0.0 <= teacher_metrics[f"teacher_eval_{key}"] <= 1.0


def test_a_teacher_that_predicts_the_labels_scores_map_one(tmp_path):
    """Evaluation end to end (reduce to per-image tables, the Trainer's padding across batches of different box
    counts, COCO AP): a model whose outputs are the labelled boxes with certain classes scores 1.0."""
    data = [row for row in scenes(9, seed=3) if len(row["labels"]["class_labels"])]

    class Oracle(torch.nn.Module):
        config = tiny_detr(0).config

        def forward(self, pixel_values, labels=None, **kwargs):
            from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

            logits = torch.full((len(labels), 8, 4), -20.0)
            boxes = torch.full((len(labels), 8, 4), 0.5)
            for i, label in enumerate(labels):
                count = len(label["class_labels"])
                logits[i, count:, -1] = 20.0  # the other queries: no object
                logits[i, torch.arange(count), label["class_labels"]] = 20.0
                boxes[i, :count] = label["boxes"]
            return DetrObjectDetectionOutput(loss=torch.zeros(()), logits=logits, pred_boxes=boxes)

    trainer = DistillationTrainer(
        model=Oracle(), args=_args(tmp_path, "ce", distill_task="object-detection"), eval_dataset=data,
        data_collator=collate,
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_map"] == pytest.approx(1.0) and metrics["eval_map_50"] == pytest.approx(1.0)


@pytest.mark.parametrize("loss", ["mimic", "pkd", "cwd", "dkd"])
def test_a_loss_without_a_detr_form_is_refused_for_a_detr_student(tmp_path, loss):
    # The neck losses and DKD serve torchvision's detectors (RoI rows, FPN levels): the arguments take them for
    # object detection, the task refuses them for a DETR student by name.
    from hfkd.losses import create_loss
    from hfkd.tasks.registry import get_task

    _args(tmp_path, loss).check_task("object-detection")
    task = get_task("object-detection", id2label=dict(enumerate(NAMES)))
    with pytest.raises(UsageError, match=f"--loss {loss} has no form for DETR-family students: pass one of kd, dist"):
        task.distill_loss(create_loss(loss), tiny_detr(0), tiny_detr(1))
    with pytest.raises(UsageError, match="serves image-classification, semantic-segmentation, not object-detection"):
        _args(tmp_path, "at").check_task("object-detection")
    ensemble = _args(tmp_path, "kd", teacher_model_name_or_path=["a", "b"])
    with pytest.raises(UsageError, match="pass one --teacher for object detection"):
        ensemble.check_task("object-detection")


def test_evaluation_puts_the_boxes_of_padded_images_back_on_their_original_pixels():
    from hfkd.tasks.detection.data import DetectionCollator
    from hfkd.tasks.detection.task import frame_sizes, references_table

    # Two images resized to 40 x 60 and 50 x 30 (from originals of 80 x 120 and 100 x 60), one box each in pixels of
    # the originals; the collator pads both to 50 x 60 and re-normalises the boxes to that canvas.
    originals = [torch.tensor([[10.0, 20.0, 50.0, 60.0]]), torch.tensor([[0.0, 30.0, 60.0, 100.0]])]
    examples = []
    for (h, w), (oh, ow), box in zip([(40, 60), (50, 30)], [(80, 120), (100, 60)], originals):
        x1, y1, x2, y2 = (box[0] / torch.tensor([ow, oh, ow, oh])).tolist()
        normalised = torch.tensor([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]])
        labels = {"class_labels": torch.tensor([1]), "boxes": normalised, "orig_size": torch.tensor([oh, ow]),
                  "size": torch.tensor([h, w])}  # fmt: skip
        examples.append({"pixel_values": torch.zeros(3, h, w), "labels": labels})
    batch = DetectionCollator()(examples)
    assert batch["pixel_values"].shape[-2:] == (50, 60)
    table = references_table(batch["labels"], frame_sizes(batch["labels"]))
    for row, box in zip(table, originals):
        torch.testing.assert_close(row[0, :4], box[0], rtol=0, atol=1e-4)
        assert row[0, 4] == 1


def test_the_teacher_sees_the_padding_mask_the_student_sees():
    from hfkd.losses import LossNeeds
    from hfkd.teachers.live import LiveTeacher

    teacher = tiny_detr(0).eval()
    pixels = torch.rand(2, 3, 48, 48)
    mask = torch.ones(2, 48, 48, dtype=torch.long)
    mask[1, 16:] = 0  # the second image is 16 rows high, padded to 48
    live = LiveTeacher(teacher, LossNeeds())
    batch = {"pixel_values": pixels, "pixel_mask": mask}
    with torch.no_grad():
        expected = teacher(pixel_values=pixels, pixel_mask=mask)
        unmasked = teacher(pixel_values=pixels)
    for output in (live(batch, epoch=0.0).main, live.outputs(batch)):
        torch.testing.assert_close(output.logits, expected.logits)
    assert not torch.allclose(unmasked.logits[1], expected.logits[1])  # the mask matters to a DETR


def test_the_trainer_imports_without_the_detection_extra():
    """scipy, torchmetrics and faster-coco-eval come with `hfkd[detection]`: a classification user's install has
    none of them, and the trainer (which knows every task) must import; matching queries says what to install."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('scipy', 'scipy.optimize', 'torchmetrics', 'faster_coco_eval', 'pycocotools'):\n"
        "    sys.modules[name] = None\n"
        "import torch, hfkd\n"
        "hfkd.DistillationTrainer\n"
        "from hfkd.losses._detr import match_queries\n"
        "from hfkd.tasks.registry import get_task\n"
        "try:\n"
        "    get_task('object-detection')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    match_queries(torch.zeros(1, 2, 3), torch.rand(1, 2, 4), torch.zeros(1, 2, 3), torch.rand(1, 2, 4))\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'needs scipy: pip install "hfkd[detection]"' in out.stdout
    assert 'needs scipy, torchmetrics, faster-coco-eval, which are not installed: pip install "hfkd[detection]"' in (
        out.stdout
    )
