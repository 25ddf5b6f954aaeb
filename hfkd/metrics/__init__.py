"""Evaluation metrics for image classification, computed with the `evaluate` library from a module shipped here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

METRIC_DIR = Path(__file__).parent / "top_k_accuracy"
TOP_K = 5


@lru_cache(maxsize=1)
def _load_metric() -> Any:
    import evaluate

    # A local folder loads without the Hub, so evaluation works offline.
    return evaluate.load(str(METRIC_DIR))


def top_k_indices(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Keep only the top-k class indices of each row (`preprocess_logits_for_metrics`).

    Reducing (B, C) logits to (B, k) indices on the device keeps evaluation memory small for large C.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices


def compute_accuracy_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for the Trainer: `accuracy` (top-1) and `top5_accuracy` from ranked predictions."""
    predictions, references = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions)
    if predictions.ndim == 2 and np.issubdtype(predictions.dtype, np.floating):
        # Raw logits (no preprocess_logits_for_metrics): rank them here.
        predictions = np.argsort(-predictions, axis=-1)[:, :TOP_K]
    return _load_metric().compute(predictions=predictions.tolist(), references=np.asarray(references).tolist())
