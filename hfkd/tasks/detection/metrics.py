"""COCO box metrics for object detection: mean average precision and recall through torchmetrics'
`MeanAveragePrecision` (faster-coco-eval by default), from per-image predictions and targets in absolute x0, y0, x1, y1
pixels of the original image.

- `post_process` turns a DETR-family model's raw outputs (`logits`, `pred_boxes`: normalised cx, cy, w, h) into such
  predictions by calling transformers' own image processors (`DetrImageProcessor` for a softmax over the classes and a
  last no-object class, `DeformableDetrImageProcessor` for a sigmoid top-k over queries x classes, which is also what
  `RTDetrImageProcessor` does), so hfkd scores boxes exactly as transformers does;
- `targets_to_xyxy` turns the DETR label convention (`class_labels`, normalised cx, cy, w, h `boxes`, `orig_size`) into
  such targets, and `padded_frame_sizes` gives the sizes to scale by when the boxes were normalised to a padded batch;
- `DetectionMetrics` accumulates them batch after batch and gives `map`, `map_50`, ..., `mar_100` and `map_<class>`.

Which frame to scale by: a model's normalised boxes are relative to the frame its training targets were normalised to,
the resized image (the original DETR code) or the padded batch (transformers' image processors renormalise the boxes
when they pad). Use the same sizes for the predictions and the targets: the IoU of two boxes does not change when both
are scaled alike, so the choice moves only the absolute coordinates and with them the small / medium / large areas.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torchvision.ops import box_convert

from hfkd.utils.errors import UsageError

HEADLINE_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")
"""The metrics of every evaluation, in COCO's summary order (when defined; see `DetectionMetrics.compute`)."""

Detection = dict[str, torch.Tensor]
Sizes = torch.Tensor | Sequence[Sequence[int]]


def _sizes(sizes: Sizes, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 2) float32 (h, w) from a tensor or a list of pairs (of ints or 0-d tensors)."""
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.to(device=device, dtype=torch.float32)
    else:
        sizes = torch.tensor([[float(h), float(w)] for h, w in sizes], dtype=torch.float32, device=device)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise UsageError(f"Image sizes are (h, w) pairs, one per image: got a tensor of shape {tuple(sizes.shape)}.")
    return sizes


def normalised_to_xyxy(boxes: torch.Tensor, size: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """(N, 4) normalised cx, cy, w, h boxes as absolute x0, y0, x1, y1 pixels of an image of `size` (h, w)."""
    height, width = (float(value) for value in size)
    boxes = torch.as_tensor(boxes).float().reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return box_convert(boxes, "cxcywh", "xyxy") * scale


def padded_frame_sizes(orig_sizes: Sizes, pixel_mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) sizes (h, w) that boxes normalised to a padded batch are scaled by to land in original-image pixels:
    `orig_size * padded / valid`, the valid (resized, unpadded) extent of each image read from its `pixel_mask`
    ((B, H, W), 1 on the image, 0 on the padding). transformers' DETR-family image processors normalise the
    targets' boxes to the padded size when they pad (`pad(update_bboxes=True)`), and a model trained on them predicts
    in that frame.
    """
    orig_sizes = _sizes(orig_sizes, pixel_mask.device)
    if pixel_mask.ndim != 3 or len(pixel_mask) != len(orig_sizes):
        raise UsageError(
            f"padded_frame_sizes takes a (B, H, W) pixel mask and B original sizes: got a mask of shape "
            f"{tuple(pixel_mask.shape)} and {len(orig_sizes)} sizes."
        )
    valid = pixel_mask.bool()
    valid_sizes = torch.stack([valid.any(dim=2).sum(dim=1), valid.any(dim=1).sum(dim=1)], dim=1).float()
    if (valid_sizes == 0).any():
        raise UsageError("A pixel mask without any valid pixel: every image needs at least one pixel set to 1.")
    padded = torch.tensor(pixel_mask.shape[-2:], dtype=torch.float32, device=pixel_mask.device)
    return orig_sizes * padded / valid_sizes


def targets_to_xyxy(labels: Sequence[Mapping[str, Any]], sizes: Sizes | None = None) -> list[Detection]:
    """Targets in the DETR label convention as `DetectionMetrics` takes them.

    Args:
        labels (`list[dict]`): one dict per image with `class_labels` (N,), `boxes` (N, 4) normalised cx, cy, w, h,
            `orig_size` (h, w) and optionally `iscrowd` (N,) (crowd boxes are matched but never missed, as in COCO).
        sizes (`torch.Tensor` or `list[tuple[int, int]]`, *optional*): the (h, w) each image's boxes are scaled by;
            defaults to its `orig_size`. Pass `padded_frame_sizes(...)` when the boxes were normalised to a padded
            batch (and the same sizes to `post_process`).

    Returns:
        `list[dict]`: per image, `boxes` (N, 4) absolute x0, y0, x1, y1, `labels` (N,) int64, and `iscrowd` when given.
    """
    if sizes is None:
        missing = [index for index, label in enumerate(labels) if "orig_size" not in label]
        if missing:
            raise UsageError(f"Labels {missing} have no `orig_size`: pass `sizes`, the (h, w) to scale boxes by.")
        sizes = [label["orig_size"] for label in labels]
    sizes = _sizes(sizes)
    if len(sizes) != len(labels):
        raise UsageError(f"targets_to_xyxy got {len(labels)} labels but {len(sizes)} sizes.")
    targets = []
    for label, size in zip(labels, sizes):
        boxes = torch.as_tensor(label["boxes"])
        target = {
            "boxes": normalised_to_xyxy(boxes, size.to(boxes.device)),
            "labels": torch.as_tensor(label["class_labels"]).long().reshape(-1),
        }
        if "iscrowd" in label:
            target["iscrowd"] = torch.as_tensor(label["iscrowd"]).long().reshape(-1)
        targets.append(target)
    return targets


@functools.cache
def _processor(use_sigmoid: bool) -> Any:
    from transformers import DeformableDetrImageProcessor, DetrImageProcessor

    return DeformableDetrImageProcessor() if use_sigmoid else DetrImageProcessor()


def post_process(
    logits: torch.Tensor, pred_boxes: torch.Tensor, target_sizes: Sizes, *, use_sigmoid: bool, top_k: int = 100
) -> list[Detection]:
    """A DETR-family model's raw outputs as per-image predictions in absolute x0, y0, x1, y1 pixels at
    `target_sizes`, by transformers' own `post_process_object_detection` with no score threshold:

    - `use_sigmoid=False` (DETR, trained with a softmax cross-entropy and a last no-object class):
      `DetrImageProcessor`'s, one box per query with its best class but no-object, then the `top_k` best of them
      (DETR has 100 queries, so all);
    - `use_sigmoid=True` (Deformable DETR, Conditional DETR, RT-DETR, D-FINE: focal loss, no no-object class):
      `DeformableDetrImageProcessor`'s, the `top_k` best (query, class) pairs of the sigmoid scores, a query possibly
      twice with two classes. `RTDetrImageProcessor` keeps as many pairs as there are queries (300): pass
      `top_k=logits.shape[1]` to get its boxes exactly.

    Args:
        logits (`torch.Tensor`): (B, Q, C) class logits (C counts the no-object class for a softmax model).
        pred_boxes (`torch.Tensor`): (B, Q, 4) normalised cx, cy, w, h boxes.
        target_sizes (`torch.Tensor` or `list[tuple[int, int]]`): the (h, w) of each image to scale the boxes to,
            its original size (or `padded_frame_sizes(...)`; see the module docstring).
        use_sigmoid (`bool`): sigmoid scores over queries x classes, else a softmax without the last class.
        top_k (`int`, *optional*, defaults to 100): the most detections kept per image, the best scored (COCO scores
            at most 100 per image and class).

    Returns:
        `list[dict]`: per image, `boxes` (K, 4), `scores` (K,) and `labels` (K,), on the device of the logits; scores
        are computed in float32 whatever the logits' precision.
    """
    if logits.ndim != 3 or pred_boxes.shape != (*logits.shape[:2], 4):
        raise UsageError(
            f"post_process takes (B, Q, C) logits and (B, Q, 4) boxes: got {tuple(logits.shape)} and "
            f"{tuple(pred_boxes.shape)}."
        )
    if top_k < 1:
        raise UsageError(f"top_k is the number of detections kept per image, at least 1: got {top_k}.")
    sizes = _sizes(target_sizes, logits.device)
    if len(sizes) != len(logits):
        raise UsageError(f"post_process got {len(logits)} images but {len(sizes)} target sizes.")
    # The processors read only these two attributes of the model output.
    outputs = SimpleNamespace(logits=logits.detach().float(), pred_boxes=pred_boxes.detach().float())
    keep_all = float("-inf")
    if use_sigmoid:
        return _processor(True).post_process_object_detection(outputs, keep_all, target_sizes=sizes, top_k=top_k)
    predictions = _processor(False).post_process_object_detection(outputs, keep_all, target_sizes=sizes)
    for index, prediction in enumerate(predictions):
        if len(prediction["scores"]) > top_k:
            best = prediction["scores"].topk(top_k).indices
            predictions[index] = {key: value[best] for key, value in prediction.items()}
    return predictions


def _on_cpu(detection: Mapping[str, Any], *, scores: bool, index: int) -> Detection:
    """One image's boxes, labels (and scores, or crowd flags) as small CPU tensors, empty ones shaped right."""
    kind = "prediction" if scores else "target"
    missing = [key for key in ("boxes", "labels", *(("scores",) if scores else ())) if key not in detection]
    if missing:
        raise UsageError(f"The {kind} of image {index} has no {', '.join(missing)}.")
    boxes = torch.as_tensor(detection["boxes"]).detach().to("cpu", torch.float32).reshape(-1, 4)
    out = {"boxes": boxes, "labels": torch.as_tensor(detection["labels"]).detach().to("cpu", torch.int64).reshape(-1)}
    optional = {"scores": torch.float32} if scores else {"iscrowd": torch.int64, "area": torch.float32}
    for key, dtype in optional.items():
        if key in detection:
            out[key] = torch.as_tensor(detection[key]).detach().to("cpu", dtype).reshape(-1)
    lengths = {key: len(value) for key, value in out.items()}
    if len(set(lengths.values())) > 1:
        raise UsageError(f"The {kind} of image {index} has tensors of different lengths: {lengths}.")
    return out


class DetectionMetrics:
    """COCO box metrics accumulated over evaluation batches: torchmetrics' `MeanAveragePrecision(iou_type="bbox",
    class_metrics=True)`, which keeps each image's boxes as its own small CPU tensors.

    Args:
        id2label (`dict[int, str]`, *optional*): class names for the per-class keys (`map_<name>`); a class not in
            it is named by its index.
        box_format (`str`, *optional*, defaults to `"xyxy"`): the format of the absolute pixel boxes given to
            `update` (`"xyxy"`, `"xywh"` or `"cxcywh"`).
        backend (`str`, *optional*, defaults to `"faster_coco_eval"`): torchmetrics' COCO backend,
            `"faster_coco_eval"` or `"pycocotools"` (the same numbers, faster-coco-eval is faster).

    torchmetrics never gathers across processes here (`sync_on_compute=False`): give `update` the images that the
    Trainer gathered from every process, each image once.
    """

    def __init__(
        self,
        id2label: Mapping[int, str] | None = None,
        box_format: str = "xyxy",
        backend: str = "faster_coco_eval",
    ) -> None:
        try:
            from torchmetrics.detection import MeanAveragePrecision
        except ImportError as error:
            raise ImportError(
                "Detection metrics need torchmetrics and faster-coco-eval: pip install 'hfkd[detection]'."
            ) from error
        self.id2label = {int(index): str(name) for index, name in (id2label or {}).items()}
        clashes = sorted(name for name in self.id2label.values() if f"map_{name}" in HEADLINE_KEYS)
        if clashes:
            raise UsageError(
                f"Classes named {clashes} would give per-class keys that are COCO's own ({', '.join(HEADLINE_KEYS)}): "
                "rename them in id2label."
            )
        # The predictions come gathered from every process already: torchmetrics' own all-gather would count each
        # image once per process.
        self._metric = MeanAveragePrecision(
            box_format=box_format, iou_type="bbox", class_metrics=True, backend=backend, sync_on_compute=False
        )

    def update(self, predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add images: `predictions` with `boxes` (K, 4), `scores` (K,) and `labels` (K,) per image, `targets` with
        `boxes` (N, 4), `labels` (N,) and optionally `iscrowd` (N,) and `area` (N,) (COCO's object areas, which
        decide small / medium / large; else the box areas), boxes in absolute pixels of the original image.
        An image may have no predictions or no targets (empty tensors)."""
        if len(predictions) != len(targets):
            raise UsageError(f"DetectionMetrics.update got {len(predictions)} predictions but {len(targets)} targets.")
        if not len(predictions):
            return
        self._metric.update(
            [_on_cpu(prediction, scores=True, index=index) for index, prediction in enumerate(predictions)],
            [_on_cpu(target, scores=False, index=index) for index, target in enumerate(targets)],
        )

    def compute(self) -> dict[str, float]:
        """The metrics of every image added since the last `reset`, as floats in [0, 1].

        Returns:
            `dict[str, float]`: `map` (AP averaged over IoU 0.50:0.95 and the classes), `map_50`, `map_75`,
            `map_small`, `map_medium`, `map_large` (areas < 32², up to 96², above; box areas unless the targets carry
            COCO's `area`), `mar_1`, `mar_10`, `mar_100` (recall with at most 1, 10, 100 detections per image and
            class) and `map_<class name>` per class. A value that COCO leaves undefined (-1) is omitted, never NaN:
            a size range without any ground-truth box, and the per-class key of a class with no ground-truth box
            (predicted only, or neither labelled nor predicted). Nothing added yet gives `{}`.
        """
        if not self._metric.groundtruth_labels:
            return {}
        result = self._metric.compute()
        metrics = {key: float(result[key]) for key in HEADLINE_KEYS}
        classes = result["classes"].reshape(-1).tolist()
        for index, value in zip(classes, result["map_per_class"].reshape(-1).tolist()):
            metrics[f"map_{self.id2label.get(index, str(index))}"] = float(value)
        return {key: value for key, value in metrics.items() if math.isfinite(value) and value >= 0}

    def reset(self) -> None:
        """Forget every image added."""
        self._metric.reset()


def table_metrics(id2label: Mapping[int, str] | None = None) -> Any:
    """The Trainer's `compute_metrics` over `DetectionTask.reduce`'s tables: predictions (N, K, 6) rows of (x1, y1, x2,
    y2, score, label) and references (N, M, 5) rows of (x1, y1, x2, y2, label), one image per row group, rows whose
    label is negative (padding, the Trainer's -100 included) left out; COCO's metrics of the N images."""

    def compute(eval_prediction: Any) -> dict[str, float]:
        metrics = DetectionMetrics(id2label)
        predictions = torch.as_tensor(eval_prediction.predictions)
        references = torch.as_tensor(eval_prediction.label_ids)
        for found, truth in zip(predictions, references):
            found, truth = found[found[:, 5] >= 0], truth[truth[:, 4] >= 0]
            metrics.update(
                [{"boxes": found[:, :4], "scores": found[:, 4], "labels": found[:, 5].long()}],
                [{"boxes": truth[:, :4], "labels": truth[:, 4].long()}],
            )
        return metrics.compute()

    return compute
