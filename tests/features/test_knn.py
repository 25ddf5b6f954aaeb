"""DINO's weighted k-NN (k=20, T=0.07, cosine, leave-one-out) against a brute-force version written from its rule."""

import math

import numpy as np
import pytest
import torch

from hfkd.tasks.features.knn import knn_predictions, knn_top1


def brute_force(features: np.ndarray, labels: np.ndarray, k: int = 20, temperature: float = 0.07) -> list[int]:
    """For each row: cosine similarity to every other row, the k most similar vote exp(s / T) for their class,
    the class with the most weight wins (ties: the lower id)."""
    unit = [row / math.sqrt(float(row @ row)) for row in features]
    predictions = []
    for i, query in enumerate(unit):
        scored = sorted(((float(query @ other), j) for j, other in enumerate(unit) if j != i), reverse=True)
        votes: dict[int, float] = {}
        for similarity, j in scored[: min(k, len(unit) - 1)]:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0.0) + math.exp(similarity / temperature)
        best = max(votes.values())
        predictions.append(min(c for c, v in votes.items() if v == best))
    return predictions


@pytest.mark.parametrize("count,classes,k", [(50, 4, 20), (7, 3, 20), (30, 5, 3)])
def test_predictions_match_brute_force(count, classes, k):
    rng = np.random.default_rng(count)
    centres = rng.normal(size=(classes, 8))
    labels = rng.integers(0, classes, count)
    features = centres[labels] + 1.5 * rng.normal(size=(count, 8))
    got = knn_predictions(torch.as_tensor(features), torch.as_tensor(labels), k=k).tolist()
    assert got == brute_force(features, labels, k=k)


def test_top1_is_the_share_of_right_predictions_and_ignores_unlabelled_rows():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    separated = np.eye(3)[labels] * 10 + 0.01 * rng.normal(size=(30, 3))
    assert knn_top1(separated.astype(np.float32), labels) == 1.0
    noisy = rng.normal(size=(30, 6))
    expected = float(np.mean(np.array(brute_force(noisy, labels)) == labels))
    assert knn_top1(noisy, labels) == pytest.approx(expected)
    assert knn_top1(separated, np.where(np.arange(30) < 29, labels, -1)) == 1.0  # the -1 row is neither bank nor query
