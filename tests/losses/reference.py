"""Second implementations written from the papers' equations, for the loss tests.

They loop over samples in float64 NumPy and share no code with hfkd.
"""

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """Hinton et al. eq. (1) with the T² gradient-scale factor: mean_i T²·KL(p_t_i ‖ p_s_i)."""
    total = 0.0
    for s, t in zip(student, teacher):
        total += kl(softmax(t / temperature), softmax(s / temperature))
    return temperature**2 * total / len(student)


def dkd(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, alpha: float, beta: float, temperature: float):
    """Zhao et al. eqs. (1)-(7): KD = TCKD + (1 − p_t^gt)·NCKD, here weighted α·TCKD + β·NCKD, times T²."""
    tckd_sum = nckd_sum = 0.0
    for s, t, y in zip(student, teacher, labels):
        p_s, p_t = softmax(s / temperature), softmax(t / temperature)
        b_s = np.array([p_s[y], 1 - p_s[y]])
        b_t = np.array([p_t[y], 1 - p_t[y]])
        tckd_sum += kl(b_t, b_s)
        others = np.arange(len(s)) != y
        hat_s = p_s[others] / p_s[others].sum()
        hat_t = p_t[others] / p_t[others].sum()
        nckd_sum += kl(hat_t, hat_s)
    n = len(student)
    tckd, nckd = temperature**2 * tckd_sum / n, temperature**2 * nckd_sum / n
    return alpha * tckd + beta * nckd, tckd, nckd


def pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    da, db = a - a.mean(), b - b.mean()
    return float(np.dot(da, db) / (np.sqrt(np.dot(da, da)) * np.sqrt(np.dot(db, db)) + eps))


def dist(student: np.ndarray, teacher: np.ndarray, beta: float, gamma: float, temperature: float):
    """Huang et al. eqs. (5)-(9): inter-class over rows, intra-class over columns, times τ²."""
    y_s = np.stack([softmax(row / temperature) for row in student])
    y_t = np.stack([softmax(row / temperature) for row in teacher])
    inter = 1 - np.mean([pearson(y_s[i], y_t[i]) for i in range(y_s.shape[0])])
    intra = 1 - np.mean([pearson(y_s[:, j], y_t[:, j]) for j in range(y_s.shape[1])])
    return temperature**2 * (beta * inter + gamma * intra), inter, intra
