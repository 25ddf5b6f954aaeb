"""Second implementations of the trainable feature losses, written from the papers' equations.

They loop over elements in float64 NumPy and share no code with hfkd. Adapters (regressors, connectors, embeddings,
ABF fusion) are the models' business; these references take their outputs, as the pure hfkd functions do.
"""

import math

import numpy as np


def adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(B, C, H, W) -> (B, C, out_h, out_w): cell i averages rows floor(i·H/out_h) .. ceil((i+1)·H/out_h) − 1."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, out_h, out_w))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -(-(i + 1) * h // out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -(-(j + 1) * w // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def fitnet(student_regressed: np.ndarray, teacher: np.ndarray) -> float:
    """Romero et al. eq. (3), L_HT = ½‖u_h − r(v_g)‖², taken as the element mean without the ½ (mdistiller)."""
    total = 0.0
    for index in np.ndindex(student_regressed.shape):
        total += (student_regressed[index] - teacher[index]) ** 2
    return total / student_regressed.size


def vid(mean: np.ndarray, teacher: np.ndarray, variance: np.ndarray) -> float:
    """Ahn et al. eq. (5): −log q(t | s) = Σ log σ_c + (t − μ)² / (2σ_c²) (+ const), averaged over the elements."""
    total = 0.0
    for b, c, h, w in np.ndindex(mean.shape):
        total += math.log(math.sqrt(variance[c])) + (teacher[b, c, h, w] - mean[b, c, h, w]) ** 2 / (2 * variance[c])
    return total / mean.size


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def ofd_margin(bn_mean: np.ndarray, bn_std: np.ndarray) -> np.ndarray:
    """Heo et al. eq. (4): m = E[x | x < 0] for x ~ N(μ, σ²) (truncated normal), −3σ when P(x < 0) ≤ 0.001."""
    margins = []
    for mu, sigma in zip(bn_mean, bn_std):
        sigma = abs(sigma)
        alpha = -mu / sigma
        below = normal_cdf(alpha)
        if below <= 1e-3:
            margins.append(-3 * sigma)
        else:
            density = math.exp(-alpha * alpha / 2) / math.sqrt(2 * math.pi)
            margins.append(mu - sigma * density / below)
    return np.array(margins)


def ofd(students: list, teachers: list, margins: list) -> float:
    """Heo et al. eqs. (5)-(6): Σ_stages d_p(max(t, m), s) / 2^(n−1−i), d_p = 0 if s ≤ T ≤ 0 else (T − s)².

    Summed over channels and positions, averaged over the batch; the teacher is pooled to the student's size.
    """
    n, total = len(students), 0.0
    for i, (s, t, m) in enumerate(zip(students, teachers, margins)):
        t = adaptive_avg_pool(t, s.shape[2], s.shape[3])
        stage = 0.0
        for b, c, h, w in np.ndindex(s.shape):
            target = max(t[b, c, h, w], m[c])
            if not (s[b, c, h, w] <= target <= 0):
                stage += (target - s[b, c, h, w]) ** 2
        total += stage / s.shape[0] / 2 ** (n - 1 - i)
    return total


def crd_nce(scores: np.ndarray, dataset_size: int, eps: float = 1e-7) -> float:
    """Tian et al. eqs. (10)-(18): h = P/(P + K·P_n); −[log h(pos) + Σ_j log(1 − h(neg_j))] per anchor, batch mean.

    1 − h = K·P_n / (P + K·P_n); `eps` sits in the denominators only, as in the authors' code.
    """
    batch, k = scores.shape[0], scores.shape[1] - 1
    noise = k / dataset_size
    total = 0.0
    for i in range(batch):
        total -= math.log(scores[i, 0] / (scores[i, 0] + noise + eps))
        for j in range(1, k + 1):
            total -= math.log(noise / (scores[i, j] + noise + eps))
    return total / batch


def crd(
    student_embed: np.ndarray,
    teacher_embed: np.ndarray,
    student_rows: np.ndarray,
    teacher_rows: np.ndarray,
    temperature: float,
    normalizers: tuple,
    dataset_size: int,
) -> float:
    """Both NCE directions: the student anchored against teacher-bank rows, the teacher against student-bank rows."""
    total = 0.0
    directions = ((student_embed, teacher_rows, normalizers[0]), (teacher_embed, student_rows, normalizers[1]))
    for anchor, rows, z in directions:
        scores = np.zeros(rows.shape[:2])
        for i, j in np.ndindex(scores.shape):
            scores[i, j] = math.exp(float(np.dot(rows[i, j], anchor[i])) / temperature) / z
        total += crd_nce(scores, dataset_size)
    return total


def hcl(students: list, teachers: list) -> float:
    """Chen et al. section 3.3 HCL: per stage, MSE plus pooled MSEs at 4, 2, 1 (below the height) halving weights."""
    total = 0.0
    for s, t in zip(students, teachers):
        h = s.shape[2]
        terms = [(1.0, np.mean((s - t) ** 2))]
        weight = 1.0
        for level in (4, 2, 1):
            if level < h:
                weight /= 2
                pooled = adaptive_avg_pool(s, level, level) - adaptive_avg_pool(t, level, level)
                terms.append((weight, np.mean(pooled**2)))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total
