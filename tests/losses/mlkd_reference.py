"""MLKD written from the equations (Jin et al., CVPR 2023) in float64 NumPy, sharing no code with hfkd."""

import numpy as np

from .reference import kd, softmax


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.stack([softmax(row / temperature) for row in logits])


def correlations(student: np.ndarray, teacher: np.ndarray, temperature: float) -> tuple[float, float]:
    p_s, p_t = _probs(student, temperature), _probs(teacher, temperature)
    classes, batch = student.shape[1], student.shape[0]
    cc = sum((p_t[:, i] @ p_t[:, j] - p_s[:, i] @ p_s[:, j]) ** 2 for i in range(classes) for j in range(classes))
    bc = sum((p_t[a] @ p_t[b] - p_s[a] @ p_s[b]) ** 2 for a in range(batch) for b in range(batch))
    return cc / classes, bc / batch


def mlkd(s_weak, t_weak, s_strong, t_strong, temperature: float) -> float:
    probs = _probs(t_weak, 1.0)
    confidence = probs.max(axis=1)
    frac_batch = np.mean(confidence <= np.percentile(confidence, 50))
    class_sums = probs.sum(axis=0)
    frac_class = np.mean(class_sums <= np.percentile(class_sums, 50))
    total = 0.0
    for i, temp in enumerate([temperature, 3.0, 5.0, 2.0, 6.0]):
        total += kd(s_weak, t_weak, temp) * frac_batch
        total += kd(s_weak, t_weak, temp) if i >= 3 else kd(s_strong, t_strong, temp)
        cc, bc = correlations(s_weak, t_weak, temp)
        total += cc * frac_class + bc * frac_batch
    return total
