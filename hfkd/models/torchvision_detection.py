"""The reference detectors of DIST and MDistiller, Faster R-CNN and RetinaNet on FPN backbones, built by torchvision's
`models.detection`, as transformers models.

Why torchvision: it is the maintained PyTorch library of these two detectors (mmdet and detectron2, the references'
libraries, do not install here); its networks are the references' in structure (ResNet + FPN, RPN, RoIAlign, two-FC
box head; RetinaNet's 4-conv heads with focal loss) and its COCO weights exist for the R50 ones.

`TorchvisionForObjectDetection` wraps one in a `PreTrainedModel` (config `model_type="hfkd_torchvision_detection"`,
registered with `AutoConfig` and `AutoModelForObjectDetection` when this module is imported), so that the trainer,
the teachers and `save_pretrained` treat it as any detector; `model.detector` is the plain torchvision model. The
wrapper takes the batches of hfkd's detection data (images already resized and normalised, padded at the bottom and
right with a `pixel_mask`; labels as transformers' detectors take them: `class_labels` and normalised (cx, cy, w, h)
`boxes`), so torchvision's own resize and normalisation (`GeneralizedRCNNTransform`) are not run. Class `i` of the
data is the detector's column `config.class_columns[i]` (0 is background): `i + 1` for a new head, COCO's category
index for torchvision's COCO weights, matched by name.

The output keeps what distillation needs: `neck_features` (the FPN levels, finest first); for Faster R-CNN in training
the class logits of the RoIs the student sampled (`logits`, background column first), their labels (`roi_labels`,
0 = background) and the RoIs (`proposals`), and `roi_logits(proposals)`, which runs the box head on any RoIs (a
teacher's, on the student's); for RetinaNet the classification head's logits per level (`dense_logits`, each
(B, A·K, H, W), K the data's classes). Its `detections` (B, 100, 6) are (x1, y1, x2, y2, score, class) with
coordinates relative to the padded input, computed when read.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForObjectDetection, PretrainedConfig, PreTrainedModel

from hfkd.utils.errors import UsageError

MODEL_TYPE = "hfkd_torchvision_detection"
FASTER_RCNN, RETINANET = "faster_rcnn", "retinanet"
DETECTIONS_PER_IMAGE = 100
"""Detections kept per image (torchvision's and COCO's maxDets)."""

# The networks by torchvision's builder names: (kind, backbone). hfkd builds the backbone (so that a reloaded model
# has the same normalisation layers as the trained one) and torchvision's FasterRCNN / RetinaNet around it.
DETECTION_NETWORKS = {
    **{f"fasterrcnn_resnet{depth}_fpn": (FASTER_RCNN, f"resnet{depth}") for depth in (18, 34, 50, 101)},
    **{f"retinanet_resnet{depth}_fpn": (RETINANET, f"resnet{depth}") for depth in (18, 34, 50, 101)},
    "fasterrcnn_resnext101_32x8d_fpn": (FASTER_RCNN, "resnext101_32x8d"),
    "retinanet_resnext101_32x8d_fpn": (RETINANET, "resnext101_32x8d"),
    "fasterrcnn_mobilenet_v2_fpn": (FASTER_RCNN, "mobilenet_v2"),
    "fasterrcnn_mobilenet_v3_large_fpn": (FASTER_RCNN, "mobilenet_v3_large"),
}
# torchvision's released COCO detection weights, loadable into the networks above (`pretrained=True` teachers).
COCO_WEIGHTS = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn")


class TorchvisionDetectionConfig(PretrainedConfig):
    """A torchvision detector: `network` (a `DETECTION_NETWORKS` name), `class_columns` (the detector's output
    column of each class, background 0; `i + 1` by default), `num_detector_classes` (its columns, background
    included), `frozen_batch_norm` (the backbone's BatchNorm frozen, as torchvision's and mmdet's ImageNet-initialised
    detectors; plain BatchNorm otherwise), `trainable_backbone_layers` (torchvision's: the last stages trained),
    `min_size` / `max_size` (the shorter / longer side it was trained at: its own preprocessing, used alone)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        network: str = "fasterrcnn_resnet50_fpn",
        class_columns: list[int] | None = None,
        num_detector_classes: int | None = None,
        frozen_batch_norm: bool = True,
        trainable_backbone_layers: int = 3,
        min_size: int = 800,
        max_size: int = 1333,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.network, self.frozen_batch_norm = network, frozen_batch_norm
        self.trainable_backbone_layers, self.min_size, self.max_size = trainable_backbone_layers, min_size, max_size
        self.class_columns = list(class_columns) if class_columns else [i + 1 for i in range(self.num_labels)]
        self.num_detector_classes = num_detector_classes or max(self.class_columns) + 1

    @property
    def kind(self) -> str:
        return DETECTION_NETWORKS[self.network][0]


class TorchvisionDetectionOutput(dict):
    """What the wrapper returns (a dict, read by attribute too): `loss` and `loss_dict` when given labels in training,
    `logits`, `neck_features`, `roi_labels`, `proposals`, `dense_logits`, `image_sizes`; `detections` on demand."""

    def __getattr__(self, name: str) -> Any:
        if name == "detections":
            if "detections" not in self and "_detect" in self:  # computed when first read, in evaluation mode only
                self["detections"] = self.pop("_detect")()
            return self.get("detections")
        try:
            return self[name]
        except KeyError:
            return None

    def roi_logits(self, proposals: list[torch.Tensor]) -> torch.Tensor:
        """The box head's class logits on `proposals` (a Faster R-CNN's own features; a teacher's, on the student's
        RoIs), rows in the order of the concatenated proposals, columns the data's classes after background."""
        return self["_roi_logits"](proposals)


def _norm_layer(frozen: bool) -> Callable[..., nn.Module]:
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d if frozen else nn.BatchNorm2d


def _backbone(config: TorchvisionDetectionConfig, weights_backbone: Any) -> nn.Module:
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    kind, name = DETECTION_NETWORKS[config.network]
    common = {"backbone_name": name, "weights": weights_backbone, "norm_layer": _norm_layer(config.frozen_batch_norm),
              "trainable_layers": config.trainable_backbone_layers}  # fmt: skip
    if name.startswith("mobilenet"):
        return mobilenet_backbone(fpn=True, **common)
    if kind == RETINANET:  # P3-P7, P6 from P5 (torchvision's retinanet_resnet50_fpn, mmdet's RetinaNet)
        return resnet_fpn_backbone(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256), **common)
    return resnet_fpn_backbone(**common)


def build_detector(config: TorchvisionDetectionConfig, weights_backbone: Any = None) -> nn.Module:
    """The torchvision detector of `config`, random init (its backbone with `weights_backbone` when given)."""
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if config.network not in DETECTION_NETWORKS:
        raise UsageError(f"Unknown torchvision detector {config.network!r}; known: {', '.join(DETECTION_NETWORKS)}.")
    backbone = _backbone(config, weights_backbone)
    sizes = {"min_size": config.min_size, "max_size": config.max_size,
             "box_detections_per_img": DETECTIONS_PER_IMAGE}  # fmt: skip
    if config.kind == RETINANET:
        return RetinaNet(backbone, num_classes=config.num_detector_classes, min_size=config.min_size,
                         max_size=config.max_size, detections_per_img=DETECTIONS_PER_IMAGE)  # fmt: skip
    if DETECTION_NETWORKS[config.network][1].startswith("mobilenet"):  # 3 maps: every anchor size on each
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        return FasterRCNN(backbone, config.num_detector_classes, rpn_anchor_generator=anchors, **sizes)
    return FasterRCNN(backbone, config.num_detector_classes, **sizes)


class TorchvisionForObjectDetection(PreTrainedModel):
    """A torchvision Faster R-CNN or RetinaNet as a transformers model (see the module docstring)."""

    config_class = TorchvisionDetectionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "detector"

    def __init__(self, config: TorchvisionDetectionConfig, weights_backbone: Any = None) -> None:
        super().__init__(config)
        self.detector = build_detector(config, weights_backbone)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # torchvision initialises its own modules.
        return

    def columns(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The detector's column of each of the data's classes (`config.class_columns`)."""
        return torch.tensor(self.config.class_columns, dtype=torch.long, device=device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> TorchvisionDetectionOutput:
        from torchvision.models.detection.image_list import ImageList

        images = ImageList(pixel_values, image_sizes(pixel_values, pixel_mask))
        targets = None if labels is None else self.targets(labels, pixel_values.shape[-2:])
        features = self.detector.backbone(pixel_values)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        output = TorchvisionDetectionOutput(neck_features=tuple(features.values()), image_sizes=images.image_sizes)
        run = self._faster_rcnn if self.config.kind == FASTER_RCNN else self._retinanet
        run(output, images, features, targets)
        return output

    def targets(self, labels: list[dict[str, Any]], frame: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """transformers' labels (normalised (cx, cy, w, h) in the padded frame, 0-based classes) as torchvision's
        targets: (x1, y1, x2, y2) pixel boxes and the detector's class columns."""
        height, width = frame
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        targets = []
        for label in labels:
            boxes = torch.as_tensor(label["boxes"], dtype=torch.float32).reshape(-1, 4)
            cx, cy, w, h = boxes.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale.to(boxes.device)
            classes = torch.as_tensor(label["class_labels"], dtype=torch.long, device=boxes.device)
            targets.append({"boxes": xyxy, "labels": self.columns(boxes.device)[classes]})
        return targets

    def _faster_rcnn(self, output: TorchvisionDetectionOutput, images: Any, features: Any, targets: Any) -> None:
        from torchvision.models.detection.roi_heads import fastrcnn_loss

        rpn, heads = self.detector.rpn, self.detector.roi_heads
        output["_roi_logits"] = functools.partial(self._box_logits, features, images.image_sizes)
        output["logits"] = output["neck_features"][0]  # what is watched for NaN until the RoI logits exist
        if targets is not None:
            # The training path (sampled proposals, losses), in evaluation too: only RPN's and the RoI heads' own
            # `training` flags are set, their layers (BatchNorm of a v2 box head) stay as they are.
            with _TrainingFlags((rpn, heads)):
                proposals, rpn_losses = rpn(images, features, targets)
                sampled, _, roi_labels, regression_targets = heads.select_training_samples(proposals, targets)
            logits, box_regression = self._box_outputs(features, sampled, images.image_sizes)
            loss_classifier, loss_box_reg = fastrcnn_loss(logits, box_regression, roi_labels, regression_targets)
            losses = {**rpn_losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            output.update(loss=sum(losses.values()), loss_dict=losses, proposals=sampled)
            output.update(logits=self._data_columns(logits), roi_labels=self._roi_classes(torch.cat(roi_labels)))
        if not self.training:
            output["_detect"] = functools.partial(self._rcnn_detections, images, features)

    def _box_outputs(self, features: Any, proposals: list[torch.Tensor], sizes: list[tuple[int, int]]) -> Any:
        heads = self.detector.roi_heads
        return heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))

    def _box_logits(self, features: Any, sizes: list[tuple[int, int]], proposals: list[torch.Tensor]) -> torch.Tensor:
        return self._data_columns(self._box_outputs(features, [p.detach() for p in proposals], sizes)[0])

    def _data_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, 1 + classes): the background column and the data's classes' columns, in the data's order."""
        columns = self.columns(logits.device)
        return logits[:, torch.cat([columns.new_zeros(1), columns])]

    def _roi_classes(self, columns: torch.Tensor) -> torch.Tensor:
        """Detector columns as (1 + the data's class), background 0: the rows' targets in `_data_columns`."""
        lookup = torch.zeros(self.config.num_detector_classes, dtype=torch.long, device=columns.device)
        classes = self.columns(columns.device)
        lookup[classes] = torch.arange(1, len(classes) + 1, device=columns.device)
        return lookup[columns]

    def _rcnn_detections(self, images: Any, features: Any) -> torch.Tensor:
        with torch.no_grad():
            proposals, _ = self.detector.rpn(images, features)
            found, _ = self.detector.roi_heads(features, proposals, images.image_sizes)
        return self._table(found, images.tensors.shape[-2:])

    def _retinanet(self, output: TorchvisionDetectionOutput, images: Any, features: Any, targets: Any) -> None:
        detector = self.detector
        levels = list(features.values())
        head = detector.head(levels)
        anchors = detector.anchor_generator(images, levels)
        per_level = [level.shape[-2] * level.shape[-1] * detector.anchor_generator.num_anchors_per_location()[0]
                     for level in levels]  # fmt: skip
        output["dense_logits"] = tuple(self._level_maps(head["cls_logits"], levels, per_level))
        output["logits"] = head["cls_logits"]
        if targets is not None:
            losses = detector.compute_loss(targets, head, anchors)
            output.update(loss=sum(losses.values()), loss_dict=losses)
        if not self.training:
            output["_detect"] = functools.partial(self._retina_detections, head, anchors, per_level, images)

    def _level_maps(self, cls_logits: torch.Tensor, levels: list[torch.Tensor], per_level: list[int]) -> list:
        """Each level's (B, A·K, H, W) logits of the data's K classes (torchvision concatenates the levels' (H, W,
        A) positions as rows of all its columns)."""
        maps = []
        for level, chunk in zip(levels, cls_logits.split(per_level, dim=1)):
            batch, height, width = level.shape[0], level.shape[-2], level.shape[-1]
            chunk = chunk[..., self.columns(chunk.device)].reshape(batch, height, width, -1)
            maps.append(chunk.permute(0, 3, 1, 2))
        return maps

    def _retina_detections(self, head: dict, anchors: list, per_level: list[int], images: Any) -> torch.Tensor:
        split_head = {name: list(value.split(per_level, dim=1)) for name, value in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        with torch.no_grad():
            found = self.detector.postprocess_detections(split_head, split_anchors, images.image_sizes)
        return self._table(found, images.tensors.shape[-2:])

    def _table(self, found: list[dict[str, torch.Tensor]], frame: tuple[int, int]) -> torch.Tensor:
        """(B, 100, 6) rows (x1, y1, x2, y2, score, class) relative to the padded frame; -1 past an image's rows."""
        height, width = frame
        table = torch.full((len(found), DETECTIONS_PER_IMAGE, 6), -1.0, device=self.device)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=table.device)
        for i, image in enumerate(found):
            keep = self._roi_classes(image["labels"]) > 0  # a COCO head's columns outside the data's classes: dropped
            boxes, scores = image["boxes"][keep], image["scores"][keep]
            classes = self._roi_classes(image["labels"][keep]) - 1
            k = min(len(scores), DETECTIONS_PER_IMAGE)
            table[i, :k, :4], table[i, :k, 4], table[i, :k, 5] = boxes[:k] / scale, scores[:k], classes[:k].float()
        return table


class _TrainingFlags:
    """Set the `training` flag of the given modules only (not their children) for a block, then restore it."""

    def __init__(self, modules: Any) -> None:
        self.modules, self.saved = list(modules), []

    def __enter__(self) -> None:
        self.saved = [module.training for module in self.modules]
        for module in self.modules:
            module.training = True

    def __exit__(self, *exc: Any) -> None:
        for module, flag in zip(self.modules, self.saved):
            module.training = flag


def image_sizes(pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> list[tuple[int, int]]:
    """Each image's (h, w) before padding: its mask's extent (the whole tensor without a mask)."""
    if pixel_mask is None:
        return [tuple(pixel_values.shape[-2:])] * len(pixel_values)
    rows, columns = pixel_mask.bool().any(dim=2).sum(1), pixel_mask.bool().any(dim=1).sum(1)
    return [(int(h), int(w)) for h, w in zip(rows.tolist(), columns.tolist())]


def torchvision_detector(
    name: str, *, id2label: dict[int, str], pretrained: bool, role: str, **config_kwargs: Any
) -> TorchvisionForObjectDetection:
    """A `DETECTION_NETWORKS` detector for the data's classes `id2label`. A student starts from its backbone's
    ImageNet weights when `pretrained` (torchvision's, downloaded from download.pytorch.org), a new detection head;
    a teacher (`role="teacher"`) from torchvision's COCO detection weights, each class its COCO column by name."""
    from torchvision.models import get_model_weights

    network = name.lower()
    if network not in DETECTION_NETWORKS:
        raise UsageError(f"Unknown torchvision detector {name!r}; known: {', '.join(DETECTION_NETWORKS)}.")
    labels = {"num_labels": len(id2label), "id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
    if not pretrained:
        # Random init trains every stage with plain BatchNorm, as torchvision's builders do without weights.
        options = {"frozen_batch_norm": False, "trainable_backbone_layers": 5, **config_kwargs}
        config = TorchvisionDetectionConfig(network=network, **labels, **options)
        return TorchvisionForObjectDetection(config)
    if role == "teacher":
        return _coco_detector(network, labels, config_kwargs)
    backbone = DETECTION_NETWORKS[network][1]
    config = TorchvisionDetectionConfig(network=network, **labels, **config_kwargs)
    return TorchvisionForObjectDetection(config, weights_backbone=_download(get_model_weights(backbone).DEFAULT))


def _coco_detector(
    network: str, labels: dict[str, Any], config_kwargs: dict[str, Any]
) -> TorchvisionForObjectDetection:
    from torchvision.models import get_model_weights

    if network not in COCO_WEIGHTS:
        raise UsageError(
            f"torchvision has no COCO weights for {network!r} (it has them for {', '.join(COCO_WEIGHTS)}): train the "
            "teacher first (--loss ce) and pass its folder, or pass --teacher_pretrained false."
        )
    weights = get_model_weights(network).DEFAULT
    categories = [str(c).lower() for c in weights.meta["categories"]]
    names = [labels["id2label"][i] for i in range(labels["num_labels"])]
    missing = [n for n in names if str(n).lower() not in categories]
    if missing:
        raise UsageError(
            f"The COCO weights of {network!r} have no class {', '.join(map(repr, missing))}: a COCO teacher teaches "
            "COCO's classes; train a teacher on this data (--loss ce) and pass its folder."
        )
    config = TorchvisionDetectionConfig(
        network=network, class_columns=[categories.index(str(n).lower()) for n in names],
        num_detector_classes=len(categories), **labels, **config_kwargs,
    )  # fmt: skip
    model = TorchvisionForObjectDetection(config)
    model.detector.load_state_dict(_download(weights).get_state_dict(progress=True))
    return model


def _download(weights: Any) -> Any:
    """`weights`, its file fetched now (torchvision keeps it in torch's hub cache), or a one-line error offline."""
    import urllib.error

    try:
        weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as error:
        raise UsageError(
            f"Could not download torchvision's {weights} ({weights.url}): {error}. Fetch the file where there is "
            f"network into {torch.hub.get_dir()}/checkpoints/, or pass --student_pretrained false / "
            "--teacher_pretrained false to start from random weights."
        ) from None
    return weights


AutoConfig.register(MODEL_TYPE, TorchvisionDetectionConfig, exist_ok=True)
AutoModelForObjectDetection.register(TorchvisionDetectionConfig, TorchvisionForObjectDetection, exist_ok=True)
