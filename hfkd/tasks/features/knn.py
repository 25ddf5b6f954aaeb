"""DINO's weighted k-NN classifier on a labelled evaluation split: how good a backbone's features are, with no
training of a head.

Caron et al., *Emerging Properties in Self-Supervised Vision Transformers*, ICCV 2021 (arXiv:2104.14294),
`eval_knn.py`:
the features are L2-normalised, each query's k = 20 nearest neighbours by cosine similarity s vote for their class
with weight exp(s / T), T = 0.07, and the class with the most weight is the prediction. Here the evaluation split is
both the memory bank and the queries, each image's own entry left out (leave-one-out): the label-free training split
has no labels to be a memory bank.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

K, TEMPERATURE = 20, 0.07
CHUNK = 1024
"""Queries scored at a time: the (chunk, N) similarities, not the whole N x N matrix, are in memory."""


def knn_predictions(
    features: torch.Tensor, labels: torch.Tensor, *, k: int = K, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """The leave-one-out weighted k-NN class of each row of `features` (N, D) among the other rows, labelled
    `labels` (N,); k is at most N − 1. Ties in the vote go to the lower class id (argmax)."""
    features = F.normalize(features.double(), dim=1)
    count, classes = features.shape[0], int(labels.max()) + 1
    k = min(k, count - 1)
    predictions = []
    for start in range(0, count, CHUNK):
        similarity = features[start : start + CHUNK] @ features.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -float("inf")  # leave the query itself out
        top, index = similarity.topk(k, dim=1)
        votes = torch.zeros(similarity.shape[0], classes, dtype=torch.float64)
        votes.scatter_add_(1, labels[index], (top / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_top1(features: np.ndarray, labels: np.ndarray) -> float:
    """The share of evaluation images whose leave-one-out k-NN class is their label (0 with fewer than 2 images)."""
    keep = labels >= 0
    features, labels = torch.as_tensor(features[keep]), torch.as_tensor(labels[keep]).long()
    if len(labels) < 2:
        return 0.0
    return float((knn_predictions(features, labels) == labels).double().mean())


def knn_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` over the evaluation's embeddings and labels: `{"knn_top1": ...}`."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        features = prediction.predictions
        features = features[0] if isinstance(features, (tuple, list)) else features
        return {"knn_top1": knn_top1(np.asarray(features), np.asarray(prediction.label_ids).reshape(-1))}

    return compute
