"""Object detection as a task: DETR-family students and teachers (`AutoModelForObjectDetection`) and torchvision's
Faster R-CNN / RetinaNet (`hfkd.models.torchvision_detection`), each trained on its own loss (transformers' Hungarian
matching of predictions to the labelled boxes; torchvision's RPN + RoI head or focal losses) and distilled in its
family's form: on matched queries (DETR), on the student's sampled RoIs or per level (torchvision), and on the FPN
neck (`--feature_loss`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from hfkd.data.batch import LABELS
from hfkd.losses import DistillationLoss
from hfkd.tasks.base import DETECTION, Task
from hfkd.tasks.detection.distill import DetrDistillation, uses_sigmoid
from hfkd.utils.errors import UsageError

TOP_K = 100
"""Detections kept per image for the metrics (COCO's maxDets)."""

PADDING = -1.0
"""The label (and score) of a row that holds no detection or no box in the reduced evaluation tensors."""


DETECTION_EXTRA = {"scipy": "scipy", "torchmetrics": "torchmetrics", "faster_coco_eval": "faster-coco-eval"}
"""The modules object detection needs beyond hfkd's own (`hfkd[detection]`), by the package that installs each."""


def require_detection_extra() -> None:
    """Stop before any work when the detection extra is missing (the matching needs scipy, COCO AP torchmetrics)."""
    missing = [package for module, package in DETECTION_EXTRA.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(
            f'Object detection needs {", ".join(missing)}, which are not installed: pip install "hfkd[detection]".'
        )


class DetectionTask(Task):
    """Object detection with DETR-family models. `labels` is a list of per-image dicts (`class_labels`, `boxes` in
    normalised (cx, cy, w, h), `orig_size`), as transformers' detectors take them; evaluation keeps each image's top
    `TOP_K` detections and its boxes, in pixels of the original image, and computes COCO's AP over them."""

    name = DETECTION
    pipeline_tag = "object-detection"
    model_suffix = "ForObjectDetection"
    auto_class = "AutoModelForObjectDetection"
    metric = "map"
    card_metrics = (("map", "mAP (%)"), ("map_50", "AP50 (%)"), ("map_75", "AP75 (%)"))
    model_loss = True
    task_loss_name = "detector loss"
    mapping_names = "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES"

    def __init__(
        self,
        *,
        score_threshold: float | None = None,
        feature_loss: str | None = None,
        feature_loss_kwargs: dict[str, Any] | None = None,
        pseudo_label_threshold: float = 0.5,
        **options: Any,
    ) -> None:
        options.pop("logits_size", None)
        require_detection_extra()
        super().__init__(**options)
        self.score_threshold = score_threshold
        self.feature_loss, self.feature_loss_kwargs = feature_loss, dict(feature_loss_kwargs or {})
        self.pseudo_label_threshold = pseudo_label_threshold

    def task_loss(self, outputs: Any, labels: Any, cross_entropy: Callable) -> torch.Tensor:
        if labels and any(label.get("unlabelled") for label in labels):
            raise UsageError(
                "The batch has images marked unlabelled and no teacher labelled them: a detection run with "
                "--labelled_samples needs a teacher (without one, the unlabelled images are dropped)."
            )
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if loss is None:
            raise UsageError(
                f"The student ({type(outputs).__name__}) returned no loss for the batch's labels: a detection student "
                "computes its matching loss from `labels` (transformers' *ForObjectDetection models do)."
            )
        return loss

    def teacher_labels(self, inputs: dict[str, Any], teacher_output: Any) -> dict[str, Any]:
        """Images marked `unlabelled` (`--labelled_samples`) take the teacher's detections scoring above
        `pseudo_label_threshold` as their targets (classes and normalised (cx, cy, w, h) boxes in the padded frame,
        as the labelled images' are)."""
        labels = inputs.get(LABELS)
        if not labels or not any(label.get("unlabelled") for label in labels):
            return inputs
        pseudo = pseudo_targets(teacher_output, self.pseudo_label_threshold, len(self.id2label))
        filled = [
            {**{k: v for k, v in label.items() if k != "unlabelled"}, **pseudo[i], "pseudo": True}
            if label.get("unlabelled") else label
            for i, label in enumerate(labels)
        ]  # fmt: skip
        return {**inputs, LABELS: filled}

    def count_labelled(self, labels: Any, size: int) -> int:
        """The images with labels (the detectors' losses are means over a micro-batch's boxes and queries)."""
        return 0 if labels is None else len(labels)

    def distill_loss(self, loss: DistillationLoss, student: Any, teacher: Any = None) -> DistillationLoss:
        from hfkd.tasks.detection.torchvision_distill import (
            TorchvisionDetectorDistillation,
            build_feature_loss,
            check_detector_losses,
            detector_family,
        )

        family = detector_family(student)
        if family != "detr":
            feature = build_feature_loss(self.feature_loss, self.feature_loss_kwargs)
            return TorchvisionDetectorDistillation(loss, student, teacher, feature)
        check_detector_losses(
            loss.key, self.feature_loss, family, None if teacher is None else detector_family(teacher)
        )
        num_labels = getattr(getattr(student, "config", None), "num_labels", None) or len(self.id2label)
        return DetrDistillation(loss, num_labels, score_threshold=self.score_threshold)

    def predictions(self, outputs: Any) -> Any:
        """DETR: (logits, pred_boxes); a torchvision detector: its (B, 100, 6) detections, relative to the input (its
        logits in training, where it detects nothing)."""
        if getattr(outputs, "pred_boxes", None) is None:
            detections = getattr(outputs, "detections", None)
            return detections if detections is not None else outputs.logits
        return outputs.logits, outputs.pred_boxes

    def teacher_predictions(self, teacher: Any, batch: dict[str, Any]) -> dict[str, Any]:
        outputs = getattr(teacher, "outputs", None)
        if outputs is None:
            raise UsageError(f"A {type(teacher).__name__} cannot be evaluated on object detection: pass one teacher.")
        return {"": self.predictions(outputs(batch))}

    def reduce(self, logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_tensor(logits):  # a torchvision detector's detections, boxes relative to the padded input
            sizes = frame_sizes(labels).to(logits.device)
            return scaled_detections(logits, sizes), references_table(labels, sizes)
        scores, boxes = logits if isinstance(logits, (tuple, list)) else (logits.logits, logits.pred_boxes)
        sizes = frame_sizes(labels).to(boxes.device)
        sigmoid = uses_sigmoid(scores, len(self.id2label))
        return detections_table(scores, boxes, sizes, sigmoid), references_table(labels, sizes)

    def metrics(self) -> Callable[..., dict[str, float]]:
        from hfkd.tasks.detection.metrics import table_metrics

        return table_metrics(self.id2label)

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from hfkd.tasks.detection.data import DetectionCollator

        return DetectionCollator()


def pseudo_targets(teacher_output: Any, threshold: float, num_labels: int) -> list[dict[str, torch.Tensor]]:
    """Per image, the teacher's detections scoring above `threshold` as targets (`class_labels`, `boxes` in
    normalised (cx, cy, w, h)): a DETR-family teacher's queries (`hfkd.losses._detr.teacher_pseudo_targets`), or a
    torchvision teacher's post-processed detections."""
    from hfkd.losses._detr import teacher_pseudo_targets

    if getattr(teacher_output, "pred_boxes", None) is not None:
        logits = teacher_output.logits
        sigmoid = uses_sigmoid(logits, num_labels)
        return teacher_pseudo_targets(logits, teacher_output.pred_boxes, threshold=threshold, use_sigmoid=sigmoid)
    table = teacher_output.detections
    targets = []
    for rows in table:
        rows = rows[(rows[:, 4] > threshold) & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])]
        x1, y1, x2, y2 = rows[:, :4].unbind(-1)
        boxes = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
        targets.append({"class_labels": rows[:, 5].long(), "boxes": boxes})
    return targets


def frame_sizes(labels: list[dict[str, Any]]) -> torch.Tensor:
    """(B, 2): the (h, w) in pixels of each original image of the frame its normalised boxes are relative to: its
    original size, or when the collator padded it (`unpadded_size`, the padded `size`), the padded frame scaled back
    to the original image (`orig_size · size / unpadded_size`), so that boxes land on the original pixels."""
    sizes = []
    for label in labels:
        size = torch.as_tensor(label["orig_size"]).double()
        if "unpadded_size" in label:
            size = size * torch.as_tensor(label["size"]).double() / torch.as_tensor(label["unpadded_size"]).double()
        sizes.append(size)
    return torch.stack(sizes)


def detections_table(logits: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """(B, TOP_K, 6): each image's best detections as (x1, y1, x2, y2, score, label) in pixels at `sizes`, picked by
    transformers' own post-processing (`hfkd.tasks.detection.metrics.post_process`); rows past them hold `PADDING`."""
    from hfkd.tasks.detection.metrics import post_process

    table = torch.full((len(logits), TOP_K, 6), PADDING, device=logits.device)
    for i, found in enumerate(post_process(logits, boxes, sizes, use_sigmoid=sigmoid, top_k=TOP_K)):
        k = len(found["scores"])
        table[i, :k, :4], table[i, :k, 4], table[i, :k, 5] = found["boxes"], found["scores"], found["labels"].float()
    return table


def scaled_detections(table: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """(B, K, 6) detections with boxes relative to each image's frame, in pixels at `sizes` ((B, 2) as (h, w));
    padding rows (`PADDING`) kept as they are."""
    table = table.clone()
    scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1).to(table.dtype)[:, None, :]
    real = table[..., 4:5] != PADDING
    table[..., :4] = torch.where(real, table[..., :4] * scale, table[..., :4])
    return table


def references_table(labels: list[dict[str, Any]], sizes: torch.Tensor) -> torch.Tensor:
    """(B, M, 5): each image's labelled boxes as (x1, y1, x2, y2, label) in pixels at `sizes`, M the most
    boxes of an image in the batch; rows past an image's boxes hold `PADDING`."""
    from hfkd.tasks.detection.metrics import targets_to_xyxy

    targets = targets_to_xyxy(labels, sizes)
    device = labels[0]["boxes"].device if labels else "cpu"
    table = torch.full((len(labels), max([len(t["labels"]) for t in targets] + [1]), 5), PADDING, device=device)
    for i, target in enumerate(targets):
        count = len(target["labels"])
        table[i, :count, :4], table[i, :count, 4] = target["boxes"].to(device), target["labels"].to(device).float()
    return table
