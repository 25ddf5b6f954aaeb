"""The label-free losses written again from their equations, in float64 NumPy loops (no torch)."""

import math

import numpy as np


def _distance(s: np.ndarray, t: np.ndarray, distance: str) -> float:
    """1 − cos(s, t), or the mean over the vector of (s/|s| − t/|t|)²."""
    if distance == "cosine":
        return 1.0 - float(s @ t) / (math.sqrt(float(s @ s)) * math.sqrt(float(t @ t)))
    a, b = s / math.sqrt(float(s @ s)), t / math.sqrt(float(t @ t))
    return float(((a - b) ** 2).mean())


def embed(student: np.ndarray, teacher: np.ndarray, distance: str) -> float:
    """mean over the batch of d(s_b, t_b) for (B, D) projected student and teacher embeddings."""
    return sum(_distance(s, t, distance) for s, t in zip(student, teacher)) / len(student)


def bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) -> (C, height, width), bilinear with half-pixel centres (align_corners=False, no antialias): the
    source coordinate of output pixel i is max(0, (i + 0.5) · in / out − 0.5)."""
    channels, in_h, in_w = image.shape
    out = np.zeros((channels, height, width))
    for i in range(height):
        y = max(0.0, (i + 0.5) * in_h / height - 0.5)
        y0 = min(int(math.floor(y)), in_h - 1)
        y1, wy = min(y0 + 1, in_h - 1), y - y0
        for j in range(width):
            x = max(0.0, (j + 0.5) * in_w / width - 0.5)
            x0 = min(int(math.floor(x)), in_w - 1)
            x1, wx = min(x0 + 1, in_w - 1), x - x0
            top = image[:, y0, x0] * (1 - wx) + image[:, y0, x1] * wx
            bottom = image[:, y1, x0] * (1 - wx) + image[:, y1, x1] * wx
            out[:, i, j] = top * (1 - wy) + bottom * wy
    return out


def dense(student: np.ndarray, teacher: np.ndarray, distance: str) -> float:
    """mean over the batch and the teacher's positions of d(resized s(i, j), t(i, j)) for (B, C, h, w) maps."""
    total, count = 0.0, 0
    for s, t in zip(student, teacher):
        resized = bilinear(s, t.shape[1], t.shape[2])
        for i in range(t.shape[1]):
            for j in range(t.shape[2]):
                total += _distance(resized[:, i, j], t[:, i, j], distance)
                count += 1
    return total / count
