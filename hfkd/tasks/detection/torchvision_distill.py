"""Distillation between torchvision detectors (`hfkd.models.torchvision_detection`), as DIST's (hunto/MasKD) and
MDistiller's (detectron2) detection code distils them.

- Faster R-CNN: the teacher's box head runs on the RoIs the student sampled (MasKD overwrites the teacher's RoIs with
  the student's; MDistiller runs both heads on the student's proposals), so student and teacher class logits pair
  row by row, background column included; the run's `kd`, `dist` (softmax) or `dkd` (each RoI's label as its
  target, background included) on those rows.
- RetinaNet: `dist` on the classification head's sigmoid scores, each position of a level one row of its anchors ×
  classes, one loss per level, summed (MasKD's `use_sigmoid` DIST on `retina_cls`).
- Neck losses (`mimic`, `pkd`, `cwd`) on the FPN levels, as the run's loss or on top of it (`--feature_loss`):
  `mimic` passes each student level through a 1×1 convolution owned by this module (MasKD's align modules); `pkd`
  and `cwd` compare the levels as they are (same channels); each is summed over the levels.

The terms are logged as `distill/<loss>` (the logit loss's own terms under their names) and `distill/<neck loss>`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from hfkd.losses import DistillationLoss, create_loss
from hfkd.losses.base import OBJECT_DETECTION
from hfkd.losses.cwd import cwd_loss
from hfkd.losses.dist import dist_loss
from hfkd.tasks.base import DETECTOR_LOSSES, NECK_LOSSES
from hfkd.utils.errors import UsageError


def detector_family(model: Any) -> str:
    """`"faster_rcnn"`, `"retinanet"` (torchvision detectors) or `"detr"` (transformers' detectors)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "hfkd_torchvision_detection":
        return config.kind
    return "detr"


def check_detector_losses(loss: str, feature_loss: str | None, student: str, teacher: str | None) -> None:
    """Refuse, in one line, a loss the student's detector family has no form for, a feature loss for DETR students,
    and a logit loss between families (a Faster R-CNN's RoI rows do not pair with a RetinaNet's positions)."""
    if loss not in DETECTOR_LOSSES[student]:
        raise UsageError(
            f"--loss {loss} has no form for {_NAMES[student]} students: pass one of "
            f"{', '.join(DETECTOR_LOSSES[student])}."
        )
    if feature_loss is not None and student == "detr":
        raise UsageError(
            f"--feature_loss {feature_loss} distils an FPN neck; DETR-family students have none here: drop it, or "
            "train a Faster R-CNN / RetinaNet student."
        )
    if teacher is not None and teacher != student and (loss not in NECK_LOSSES or "detr" in (student, teacher)):
        raise UsageError(
            f"A {_NAMES[teacher]} teacher and a {_NAMES[student]} student: their outputs do not pair up for --loss "
            f"{loss}. Distil between detectors of one family, or between Faster R-CNN and RetinaNet with a neck loss "
            f"alone (--loss {' / '.join(NECK_LOSSES)})."
        )


_NAMES = {"detr": "DETR-family", "faster_rcnn": "Faster R-CNN", "retinanet": "RetinaNet"}


def neck_channels(model: Any) -> tuple[int, int]:
    """(channels, levels) of a torchvision detector's FPN."""
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    backbone = model.detector.backbone
    extra = {LastLevelMaxPool: 1, LastLevelP6P7: 2}.get(type(backbone.fpn.extra_blocks), 0)
    return int(backbone.out_channels), len(backbone.body.return_layers) + extra


class TorchvisionDetectorDistillation(DistillationLoss):
    """The run's loss (and `--feature_loss`) in its form for torchvision detectors (see the module docstring)."""

    tasks = frozenset({OBJECT_DETECTION})

    def __init__(self, inner: DistillationLoss, student: Any, teacher: Any, feature_loss: DistillationLoss | None):
        super().__init__()
        self.family = detector_family(student)
        check_detector_losses(inner.key, getattr(feature_loss, "key", None), self.family,
                              None if teacher is None else detector_family(teacher))  # fmt: skip
        self.key = inner.key
        self.logit_loss = None if inner.key in NECK_LOSSES else inner
        self.neck_losses = nn.ModuleList([loss for loss in (inner, feature_loss) if loss is not None
                                          and loss.key in NECK_LOSSES])  # fmt: skip
        self.adapters = None
        if any(loss.key == "mimic" for loss in self.neck_losses):
            (student_channels, levels), teacher_channels = neck_channels(student), neck_channels(teacher)[0]
            self.adapters = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(levels))
        self._hparams = {**inner.hparams(), **({f"feature_{k}": v for k, v in feature_loss.hparams().items()}
                                               if feature_loss is not None else {})}  # fmt: skip
        if feature_loss is not None:
            self._hparams["feature_loss"] = feature_loss.key
        if self.family == "retinanet" and self.logit_loss is not None:
            self._hparams["use_sigmoid"] = True  # RetinaNet's scores are sigmoids: DIST on them, per level

    def forward(self, student: Any, teacher: Any, batch: Any) -> dict[str, torch.Tensor]:
        total, terms = 0.0, {}
        if self.logit_loss is not None:
            rows = self._roi_loss if self.family == "faster_rcnn" else self._dense_loss
            value, logged = rows(student, teacher, batch)
            total, terms = total + value, {**terms, **logged}
        for loss in self.neck_losses:
            value = self._neck_loss(loss, student.neck_features, teacher.neck_features)
            total, terms[loss.key] = total + value, value.detach()
        return {"loss": total, **terms}

    def _roi_loss(self, student: Any, teacher: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if student.proposals is None:
            raise UsageError("A Faster R-CNN student distils on the RoIs it samples from labelled images: no labels.")
        with torch.no_grad():
            teacher_rows = teacher.roi_logits(student.proposals)
        teacher["logits"] = teacher_rows  # what the trainer watches for non-finite values
        rows_batch = dataclasses.replace(batch, labels=student.roi_labels, pixel_mask=None)
        out = self.logit_loss(student.logits, teacher_rows, rows_batch)
        return out["loss"], {name: value for name, value in out.items() if name != "loss"}

    def _dense_loss(self, student: Any, teacher: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.logit_loss
        hparams = {"beta": loss.beta, "gamma": loss.gamma, "temperature": loss.temperature}
        levels = [dist_loss(s, t, use_sigmoid=True, **hparams)
                  for s, t in zip(student.dense_logits, teacher.dense_logits, strict=True)]  # fmt: skip
        value = torch.stack(levels).sum()
        return value, {"dist": value.detach()}

    def _neck_loss(self, loss: DistillationLoss, student: Any, teacher: Any) -> torch.Tensor:
        if len(student) != len(teacher):
            raise UsageError(
                f"{loss.key}: the student's neck has {len(student)} levels and the teacher's {len(teacher)}; pair "
                "detectors of the same FPN (Faster R-CNN with Faster R-CNN: P2-P6; RetinaNet: P3-P7)."
            )
        if loss.key == "mimic":
            student = [adapter(level) for adapter, level in zip(self.adapters, student)]
        if loss.key == "cwd":  # CWD's channel distributions per level (its forward reads logits)
            value = sum(cwd_loss(s, t, temperature=loss.temperature) for s, t in zip(student, teacher))
            return loss.loss_weight * value
        return loss(_Neck(student), _Neck(teacher), None)["loss"]


class _Neck(dict):
    """An output holding only `neck_features` (what the neck losses read)."""

    def __init__(self, levels: Any) -> None:
        super().__init__(neck_features=tuple(levels))


def build_feature_loss(key: str | None, kwargs: dict[str, Any] | None) -> DistillationLoss | None:
    """The `--feature_loss` module (a registered neck loss), or None."""
    return None if key is None else create_loss(key, **(kwargs or {}))
