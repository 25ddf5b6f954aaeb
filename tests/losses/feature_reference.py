"""Second implementations of the feature losses, written from the papers' equations.

They loop over samples, positions and pairs in float64 NumPy and share no code with hfkd. Feature maps are
(B, C, H, W) arrays, embeddings (B, D) arrays; lists of maps are paired stage by stage.
"""

import math

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    # F.normalize semantics: divide by max(‖v‖, 1e-12).
    return v / max(math.sqrt(float(np.dot(v, v))), 1e-12)


def adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive average pooling of (C, H, W): bin i spans [floor(i·H/out), ceil((i+1)·H/out))."""
    c, h, w = x.shape
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            for ch in range(c):
                out[ch, i, j] = x[ch, h0:h1, w0:w1].mean()
    return out


def _pool_pair(fs: np.ndarray, ft: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The larger map is pooled down to the smaller height and width.
    h, w = min(fs.shape[1], ft.shape[1]), min(fs.shape[2], ft.shape[2])
    if fs.shape[1:] != (h, w):
        fs = adaptive_avg_pool(fs, h, w)
    if ft.shape[1:] != (h, w):
        ft = adaptive_avg_pool(ft, h, w)
    return fs, ft


def at(student: list, teacher: list, p: float) -> float:
    """Zagoruyko & Komodakis: Σ_stages mean_{b, position} (Q_s/‖Q_s‖ − Q_t/‖Q_t‖)², Q = vec(mean_c |A_c|^p)."""
    total = 0.0
    for gs, gt in zip(student, teacher):
        stage = []
        for fs, ft in zip(gs, gt):
            fs, ft = _pool_pair(fs, ft)
            positions = [(i, j) for i in range(fs.shape[1]) for j in range(fs.shape[2])]
            qs = _unit(np.array([np.mean(np.abs(fs[:, i, j]) ** p) for i, j in positions]))
            qt = _unit(np.array([np.mean(np.abs(ft[:, i, j]) ** p) for i, j in positions]))
            stage.extend((qs - qt) ** 2)
        total += float(np.mean(stage))
    return total


def nst(student: list, teacher: list) -> float:
    """Huang & Wang: squared MMD between the normalised channel maps, k(x, y) = (xᵀy)², averaged over samples."""
    total = 0.0
    for gs, gt in zip(student, teacher):
        per_sample = []
        for fs, ft in zip(gs, gt):
            fs, ft = _pool_pair(fs, ft)
            s = [_unit(c.reshape(-1)) for c in fs]
            t = [_unit(c.reshape(-1)) for c in ft]

            def mean_kernel(a: list, b: list) -> float:
                return sum(float(np.dot(x, y)) ** 2 for x in a for y in b) / (len(a) * len(b))

            per_sample.append(mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t))
        total += float(np.mean(per_sample))
    return total


def sp(student: list, teacher: list) -> float:
    """Tung & Mori: Σ_stages (1/b²) ‖G_T − G_S‖_F², G = row-normalised Q Qᵀ of the reshaped activations."""

    def gram(g: np.ndarray) -> np.ndarray:
        q = [x.reshape(-1) for x in g]
        return np.stack([_unit(np.array([np.dot(q[i], q[j]) for j in range(len(q))])) for i in range(len(q))])

    total = 0.0
    for gs, gt in zip(student, teacher):
        b = len(gs)
        diff = gram(gt) - gram(gs)
        total += sum(diff[i, j] ** 2 for i in range(b) for j in range(b)) / b**2
    return total


def pkt(student: np.ndarray, teacher: np.ndarray, eps: float = 1e-7) -> float:
    """Passalis & Tefas with the cosine kernel: mean_{i,j} q_{j|i} log((q_{j|i} + ε)/(p_{j|i} + ε))."""
    b = len(student)

    def conditional(x: np.ndarray) -> np.ndarray:
        unit = [v / (math.sqrt(float(np.dot(v, v))) + eps) for v in x]
        kernel = np.array([[(np.dot(unit[i], unit[j]) + 1) / 2 for j in range(b)] for i in range(b)])
        return np.stack([row / row.sum() for row in kernel])

    q, p = conditional(teacher), conditional(student)
    return sum(q[i, j] * math.log((q[i, j] + eps) / (p[i, j] + eps)) for i in range(b) for j in range(b)) / b**2


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rkd(student: np.ndarray, teacher: np.ndarray, distance_weight: float, angle_weight: float):
    """Park et al.: ψ_D = ‖x_i − x_j‖/μ (squared distance floored at 1e-12), ψ_A = cos∠x_j x_i x_k; Huber (δ=1)
    averaged over all B² pairs and B³ triplets. Returns (total, distance term, angle term)."""
    b = len(student)

    def distances(x: np.ndarray) -> np.ndarray:
        d = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                if i != j:
                    d[i, j] = math.sqrt(max(float(np.sum((x[i] - x[j]) ** 2)), 1e-12))
        positive = d[d > 0]
        return d / positive.mean()

    def angles(x: np.ndarray) -> list:
        out = []
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    out.append(float(np.dot(_unit(x[j] - x[i]), _unit(x[k] - x[i]))))
        return out

    ds, dt = distances(student), distances(teacher)
    distance = sum(_huber(ds[i, j] - dt[i, j]) for i in range(b) for j in range(b)) / b**2
    angle = sum(_huber(s - t) for s, t in zip(angles(student), angles(teacher))) / b**3
    return distance_weight * distance + angle_weight * angle, distance, angle


def _right_singular(matrix: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    _, values, vt = np.linalg.svd(matrix, full_matrices=False)
    return vt[:n].T.copy(), values[:n]


def kdsvd(student: list, teacher: list, k: int) -> float:
    """Lee, Kim & Song as mdistiller's KDSVD computes it, per sample: SVD of the (C·H, W) view; teacher's k leading
    right singular vectors, each signed so its largest-magnitude entry is positive; the student's k + 3, each
    teacher vector matched by the student vector of largest |cosine| times that cosine's sign; both scaled by
    the teacher's normalised leading singular values; from the second stage on,
    Σ_{a,b,m} (exp(−(s_a,m − s'_b,m)²/8) − exp(−(t_a,m − t'_b,m)²/8))². Summed over stages, divided by B."""
    b = len(student[0])
    total = 0.0
    for n in range(b):
        previous = None
        for gs, gt in zip(student, teacher):
            fs, ft = gs[n], gt[n]
            vt, st = _right_singular(ft.reshape(-1, ft.shape[-1]), k)
            for m in range(vt.shape[1]):
                if vt[np.argmax(np.abs(vt[:, m])), m] < 0:
                    vt[:, m] = -vt[:, m]
            vs_all, _ = _right_singular(fs.reshape(-1, fs.shape[-1]), k + 3)
            vs = np.zeros_like(vt)
            for m in range(vt.shape[1]):
                cosines = [float(np.dot(vs_all[:, i], vt[:, m])) for i in range(vs_all.shape[1])]
                best = int(np.argmax(np.abs(cosines)))
                vs[:, m] = np.sign(cosines[best]) * vs_all[:, best]
            scale = st / math.sqrt(float(np.dot(st, st)))
            vs, vt = vs * scale, vt * scale
            if previous is not None:
                ps, pt = previous
                for a in range(vs.shape[0]):
                    for c in range(ps.shape[0]):
                        for m in range(vs.shape[1]):
                            rbf_s = math.exp(-((vs[a, m] - ps[c, m]) ** 2) / 8)
                            rbf_t = math.exp(-((vt[a, m] - pt[c, m]) ** 2) / 8)
                            total += (rbf_s - rbf_t) ** 2
            previous = (vs, vt)
    return total / b


def mimic(student: list, teacher: list) -> float:
    """Li et al.'s mimic as MasKD applies it to a neck: Σ_levels (1 / N·C·H·W) Σ (f_s − f_t)²."""
    total = 0.0
    for fs, ft in zip(student, teacher):
        total += sum(float(d) ** 2 for d in (fs - ft).ravel()) / fs.size
    return total


def bilinear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) with half-pixel centres (PyTorch's align_corners=False): the source coordinate
    of output i is (i + 0.5)·in/out − 0.5, clamped at 0, between its floor and the next pixel (clamped at the edge)."""
    n, c, h, w = x.shape

    def taps(size_in: int, size_out: int, i: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = int(math.floor(src))
        return low, min(low + 1, size_in - 1), src - low

    out = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        y0, y1, dy = taps(h, out_h, i)
        for j in range(out_w):
            x0, x1, dx = taps(w, out_w, j)
            out[:, :, i, j] = (
                (1 - dy) * ((1 - dx) * x[:, :, y0, x0] + dx * x[:, :, y0, x1])
                + dy * ((1 - dx) * x[:, :, y1, x0] + dx * x[:, :, y1, x1])
            )
    return out


def pkd(student: list, teacher: list, eps: float = 1e-6) -> float:
    """Cao et al. as mmrazor's PKDLoss: the student resized bilinearly to the teacher's size; every channel z-scored
    over its N·H·W values (unbiased std, + eps); Σ_levels mean (ẑ_s − ẑ_t)² / 2."""
    total = 0.0
    for fs, ft in zip(student, teacher):
        if fs.shape[2:] != ft.shape[2:]:
            fs = bilinear_resize(fs, *ft.shape[2:])
        squared, count = 0.0, 0
        for ch in range(ft.shape[1]):
            zs, zt = [], []
            for values, out in ((fs[:, ch].ravel(), zs), (ft[:, ch].ravel(), zt)):
                m = len(values)
                mean = sum(values) / m
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))
                out.extend((v - mean) / (std + eps) for v in values)
            squared += sum((a - b) ** 2 for a, b in zip(zs, zt))
            count += len(zs)
        total += squared / count / 2
    return total
