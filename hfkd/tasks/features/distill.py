"""The run's label-free loss and its `--feature_loss`, summed: `--loss embed --feature_loss dense` distils the
global embedding and the patch features at once."""

from __future__ import annotations

from typing import Any

import torch

from hfkd.losses import DistillationLoss
from hfkd.losses.base import IMAGE_FEATURE_EXTRACTION


class FeatureDistillation(DistillationLoss):
    """`inner` (the run's `--loss`) plus `feature` (`--feature_loss`, weighed by its own `loss_weight`), each term
    logged under its key; the trainer weighs the sum with `distill_weight`. Their projections are this module's
    parameters (`inner.projection`, `feature.projection`), saved in `distill_adapters.safetensors`."""

    tasks = frozenset({IMAGE_FEATURE_EXTRACTION})

    def __init__(self, inner: DistillationLoss, feature: DistillationLoss | None = None) -> None:
        super().__init__()
        self.key, self.needs, self.paper = inner.key, inner.needs, inner.paper
        self.inner, self.feature = inner, feature
        self._hparams = dict(inner.hparams())
        if feature is not None:
            self._hparams.update({f"feature_{k}": v for k, v in feature.hparams().items()})
            self._hparams["feature_loss"] = feature.key

    def forward(self, student: Any, teacher: Any, batch: Any) -> dict[str, torch.Tensor]:
        terms = self.inner(student, teacher, batch)
        total = terms.pop("loss")
        if self.feature is not None:
            extra = self.feature(student, teacher, batch)
            total = total + extra.pop("loss")
            terms.update(extra)
        return {"loss": total, **terms}
