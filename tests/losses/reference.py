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


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def dist(
    student: np.ndarray, teacher: np.ndarray, beta: float, gamma: float, temperature: float, use_sigmoid: bool = False
):
    """Huang et al. eqs. (5)-(9): inter-class over rows, intra-class over columns, times τ². With `use_sigmoid`, each
    entry's sigmoid (MasKD's detection DIST) replaces the row's softmax."""
    score = (lambda row: sigmoid(row / temperature)) if use_sigmoid else (lambda row: softmax(row / temperature))
    y_s = np.stack([score(row) for row in student])
    y_t = np.stack([score(row) for row in teacher])
    inter = 1 - np.mean([pearson(y_s[i], y_t[i]) for i in range(y_s.shape[0])])
    intra = 1 - np.mean([pearson(y_s[:, j], y_t[:, j]) for j in range(y_s.shape[1])])
    return temperature**2 * (beta * inter + gamma * intra), inter, intra


def standardize(logits: np.ndarray) -> np.ndarray:
    """Sun et al. (CVPR 2024) Z-score: (z − mean) / (std + 1e-7) per row, with the unbiased (C − 1) std."""
    out = np.empty(logits.shape, dtype=np.float64)
    for i, row in enumerate(logits):
        n = len(row)
        mean = sum(row) / n
        std = np.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
        out[i] = (row - mean) / (std + 1e-7)
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    # F.normalize semantics: divide by max(‖v‖, 1e-12).
    return v / max(np.sqrt(np.dot(v, v)), 1e-12)


def median_fractions(teacher: np.ndarray) -> tuple[float, float]:
    """MLKD/SKD masks from the teacher softmax at T=1, as the reference computes them with np.percentile(·, 50)."""
    probs = np.stack([softmax(row) for row in teacher])
    confidence = np.array([row.max() for row in probs])
    class_sum = np.array([probs[:, j].sum() for j in range(probs.shape[1])])
    frac_batch = np.mean(confidence <= np.percentile(confidence, 50))
    frac_class = np.mean(class_sum <= np.percentile(class_sum, 50))
    return float(frac_batch), float(frac_class)


def skd_direction(student: np.ndarray, teacher: np.ndarray, tikhonov: float) -> float:
    """StreamLined SKD_loss: mean_b sqrt(D_bᵀ (cov(D) + λI)⁻¹ D_b), D = n_s n_sᵀ/C − n_t n_tᵀ/C.

    cov(D) has the columns of D as variables and its rows as observations, divided by B − 1.
    """
    b, c = student.shape
    n_s, n_t = [_unit(r) for r in student], [_unit(r) for r in teacher]
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            d[i, j] = np.dot(n_s[i], n_s[j]) / c - np.dot(n_t[i], n_t[j]) / c
    col_mean = [sum(d[k, j] for k in range(b)) / b for j in range(b)]
    sigma = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            sigma[i, j] = sum((d[k, i] - col_mean[i]) * (d[k, j] - col_mean[j]) for k in range(b)) / (b - 1)
        sigma[i, i] += tikhonov
    inverse = np.linalg.inv(sigma)
    return float(np.mean([np.sqrt(d[k] @ inverse @ d[k]) for k in range(b)]))


def skd(student: np.ndarray, teacher: np.ndarray, temperature: float, tikhonov: float):
    """StreamLined SKD distillation part (without the ce/kd weights): KD_T·frac_B + L_dir·frac_C."""
    kd_value = kd(student, teacher, temperature)
    direction = skd_direction(student, teacher, tikhonov)
    frac_batch, frac_class = median_fractions(teacher)
    return kd_value * frac_batch + direction * frac_class, kd_value, direction, frac_batch, frac_class


def clkd(student: np.ndarray, teacher: np.ndarray, instance_weight: float, class_weight: float, corr_weight: float):
    """StreamLined CLKD_loss: MSE of row-normalised logits, MSE of column-normalised logits, and
    ‖Cov_s − Cov_t‖_F / C² with Cov = (z − batch mean)ᵀ(z − batch mean)/(C − 1)."""
    b, c = student.shape
    instance = sum(np.sum((_unit(student[i]) - _unit(teacher[i])) ** 2) for i in range(b)) / (b * c)
    class_ = sum(np.sum((_unit(student[:, j]) - _unit(teacher[:, j])) ** 2) for j in range(c)) / (b * c)

    def cov(z: np.ndarray) -> np.ndarray:
        centred = z - np.array([z[:, j].mean() for j in range(c)])
        out = np.zeros((c, c))
        for p in range(c):
            for q in range(c):
                out[p, q] = np.dot(centred[:, p], centred[:, q]) / (c - 1)
        return out

    class_corr = np.sqrt(np.sum((cov(student) - cov(teacher)) ** 2)) / c**2
    total = instance_weight * instance + class_weight * class_ + corr_weight * class_corr
    return total, instance, class_, class_corr


def pixel_rows(maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(B, C, H, W) maps as one row of C values per kept pixel, in the (b, w, h) order of DIST's `transpose(1, 3)`."""
    b, _, h, w = maps.shape
    pixels = [(i, y, x) for i in range(b) for x in range(w) for y in range(h)]
    return np.array([maps[i, :, y, x] for i, y, x in pixels if mask is None or mask[i, y, x]])


def kd_dense(student: np.ndarray, teacher: np.ndarray, temperature: float, mask: np.ndarray | None = None) -> float:
    """Pixel-wise KD: T²·KL(p_t ‖ p_s) over the classes at each pixel, averaged over the kept pixels (0 if none)."""
    b, _, h, w = student.shape
    values = [
        kl(softmax(teacher[i, :, y, x] / temperature), softmax(student[i, :, y, x] / temperature))
        for i in range(b)
        for y in range(h)
        for x in range(w)
        if mask is None or mask[i, y, x]
    ]
    return temperature**2 * sum(values) / len(values) if values else 0.0


def cwd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """Shu et al.: per sample and channel, KL over the H·W positions of softmax(map / τ); summed, × τ² / (N·C)."""
    n, c = student.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            total += kl(softmax(teacher[i, j].ravel() / temperature), softmax(student[i, j].ravel() / temperature))
    return temperature**2 * total / (n * c)


def cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    """−Σ_c q_c log ψ(z)_c for a distribution q over the classes (a one-hot label, or Mixup's soft target)."""
    return float(-np.sum(target * np.log(softmax(logits))))


def deit(
    cls_logits: np.ndarray,
    distillation_logits: np.ndarray,
    teacher: np.ndarray,
    targets: np.ndarray,
    distillation_type: str,
    alpha: float,
    temperature: float,
) -> tuple[float, float, float]:
    """Touvron et al. §4 with a distillation token: the class head's CE against the targets (B, C), the distillation
    head's against the teacher. Hard: CE against y_t = argmax_c Z_t(c). Soft: τ²·KL(ψ(Z_t/τ) ‖ ψ(Z_s/τ)), summed
    over the samples and divided by B·C, the normalisation of the authors' losses.py (the paper's per-sample KL
    / C). Returns ((1 − α)·base + α·distillation, base, distillation)."""
    b, c = cls_logits.shape
    base = sum(cross_entropy(z, q) for z, q in zip(cls_logits, targets)) / b
    if distillation_type == "hard":
        teacher_labels = [np.eye(c)[int(np.argmax(t))] for t in teacher]
        distillation = sum(cross_entropy(z, y_t) for z, y_t in zip(distillation_logits, teacher_labels)) / b
    else:
        kls = [kl(softmax(t / temperature), softmax(z / temperature)) for z, t in zip(distillation_logits, teacher)]
        distillation = temperature**2 * sum(kls) / (b * c)
    return (1 - alpha) * base + alpha * distillation, base, distillation
