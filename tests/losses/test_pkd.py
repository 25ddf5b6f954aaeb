import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import DistillBatch, create_loss, pkd_loss
from hfkd.utils.errors import UsageError

from .feature_inputs import as_numpy as _numpy
from .feature_inputs import seeded_maps as _maps
from .feature_reference import pkd as reference_pkd

LEVELS = [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]


def _detector(maps):
    return SimpleNamespace(logits=torch.zeros(maps[0].shape[0], 5), neck_features=tuple(maps))


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.pkd (float64 NumPy loops) on four seeded levels of 8 channels: the teacher is the
    # student (upsampled) plus noise, at another scale and offset; the student's first level is half the teacher's
    # size (bilinearly resized in the loss).
    s = _maps([(2, 8, 8, 8), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)], seed=103)
    noise = _maps([(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)], seed=104)
    t = [5.0 * (F.interpolate(a, size=b.shape[2:]) + b) + 1.0 for a, b in zip(s, noise)]
    assert pkd_loss(s, t).item() == pytest.approx(1.3244571639825389, rel=1e-12)


@pytest.mark.parametrize(
    "student_shapes,teacher_shapes,scale",
    [
        ([(4, 3, 5, 5)], [(4, 3, 5, 5)], 1.0),
        (LEVELS, LEVELS, 3.0),
        # The student larger than the teacher, then smaller and not square: resized to the teacher's size.
        ([(2, 4, 8, 8), (2, 2, 3, 5)], [(2, 4, 4, 4), (2, 2, 6, 7)], 0.5),
        ([(1, 2, 1, 2)], [(1, 2, 3, 3)], 2.0),
    ],
)
def test_matches_paper_equation(student_shapes, teacher_shapes, scale):
    s, t = _maps(student_shapes, seed=len(student_shapes), scale=scale), _maps(teacher_shapes, seed=60)
    expected = reference_pkd(_numpy(s), _numpy(t))
    assert pkd_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    single = pkd_loss([m.float() for m in s], [m.float() for m in t])
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-5)


def test_is_one_minus_the_pearson_correlation_of_each_channel():
    # The paper's reading: (M − 1)/M · mean_c (1 − r_c) per level, M = N·H·W, up to the 1e-6 on the std.
    s, t = _maps(LEVELS, seed=11), _maps(LEVELS, seed=12)
    expected = 0.0
    for a, b in zip(_numpy(s), _numpy(t)):
        count = a.shape[0] * a.shape[2] * a.shape[3]
        r = [np.corrcoef(a[:, c].ravel(), b[:, c].ravel())[0, 1] for c in range(a.shape[1])]
        expected += (count - 1) / count * np.mean([1 - v for v in r])
    assert pkd_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_magnitudes_do_not_matter():
    # A positive scale and any offset per channel, on either side, leave the loss unchanged (up to the eps).
    s, t = _maps(LEVELS, seed=13), _maps(LEVELS, seed=14)
    g = torch.Generator().manual_seed(0)
    rescaled = [m * (torch.rand(1, 8, 1, 1, generator=g, dtype=m.dtype) * 10 + 0.1) + 3.0 for m in t]
    assert pkd_loss(s, rescaled).item() == pytest.approx(pkd_loss(s, t).item(), rel=1e-5)
    assert pkd_loss([100 * m for m in s], t).item() == pytest.approx(pkd_loss(s, t).item(), rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s = [m.requires_grad_() for m in _maps([(2, 3, 4, 4), (2, 3, 2, 3)], seed=3)]
    t = [m.requires_grad_() for m in _maps([(2, 3, 4, 4), (2, 3, 4, 4)], seed=4)]
    # The second level is resized bilinearly from 2×3 to 4×4 inside the loss.
    assert torch.autograd.gradcheck(lambda a, b: pkd_loss([a, b], t), tuple(s))
    pkd_loss(s, t).backward()
    assert all(m.grad is None for m in t) and all(torch.isfinite(m.grad).all() for m in s)


def test_identical_features_give_zero():
    s = _maps(LEVELS, seed=5, scale=4.0)
    assert pkd_loss(s, [m.clone() for m in s]).item() == 0.0


def test_mismatched_channels_and_single_values_are_refused():
    s, t = _maps(LEVELS, seed=7), _maps(LEVELS, seed=8)
    with pytest.raises(UsageError, match=r"student level \(2, 8, 8, 8\) and its teacher level \(2, 4, 8, 8\)"):
        pkd_loss(s, [t[0], t[1][:, :4], t[2]])
    with pytest.raises(UsageError, match="3 student and 1 teacher neck levels"):
        pkd_loss(s, t[:1])
    with pytest.raises(UsageError, match=r"N·H·W ≥ 2"):
        pkd_loss([s[2][:1, :, :1, :1]], [t[2][:1, :, :1, :1]])


def test_module_reads_neck_features_with_weight_six():
    s = [m.float().requires_grad_() for m in _maps(LEVELS, seed=9)]
    t = [m.float() for m in _maps(LEVELS, seed=10)]
    loss = create_loss("pkd")
    assert loss.hparams() == {"loss_weight": 6.0} and not list(loss.parameters())
    assert loss.tasks == {"object-detection"} and loss.paper.arxiv_id == "2207.02039"
    out = loss(_detector(s), {"logits": None, "neck_features": tuple(t)}, DistillBatch())
    assert set(out) == {"loss", "pkd"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    torch.testing.assert_close(out["loss"], 6.0 * pkd_loss(s, t), rtol=0, atol=0)
    torch.testing.assert_close(out["pkd"], pkd_loss(s, t).detach(), rtol=0, atol=0)
    out["loss"].backward()
    assert all(m.grad is not None for m in s)
    weighted = create_loss("pkd", loss_weight=10.0)(_detector(s), _detector(t), DistillBatch())
    assert not math.isclose(weighted["loss"].item(), out["loss"].item())
    with pytest.raises(UsageError, match="student output .* no `neck_features`"):
        loss(SimpleNamespace(logits=s[0]), _detector(t), DistillBatch())
    with pytest.raises(ValueError, match="loss_weight"):
        create_loss("pkd", loss_weight=-6.0)
