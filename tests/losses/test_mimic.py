import math
from types import SimpleNamespace

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, mimic_loss
from hfkd.utils.errors import UsageError

from .feature_inputs import as_numpy as _numpy
from .feature_inputs import seeded_maps as _maps
from .feature_reference import mimic as reference_mimic

# FPN-like levels: one channel count, strides doubling.
LEVELS = [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4)]


def _detector(maps):
    """A detection output as the object-detection task gives it: logits and a tuple of neck levels."""
    return SimpleNamespace(logits=torch.zeros(maps[0].shape[0], 5), neck_features=tuple(maps))


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.mimic (float64 NumPy loops) on these seeded five-level maps.
    shapes = [(2, 16, 32 // 2**i, 32 // 2**i) for i in range(5)]
    s, t = _maps(shapes, seed=103), _maps(shapes, seed=104, scale=2.0)
    assert mimic_loss(s, t).item() == pytest.approx(24.651986542068034, rel=1e-12)


@pytest.mark.parametrize(
    "shapes,scale", [([(4, 3, 5, 5)], 1.0), (LEVELS, 3.0), ([(1, 2, 3, 7), (1, 2, 1, 1)], 0.1)]
)
def test_matches_paper_equation(shapes, scale):
    s, t = _maps(shapes, seed=len(shapes), scale=scale), _maps(shapes, seed=50, scale=scale)
    expected = reference_mimic(_numpy(s), _numpy(t))
    assert mimic_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    single = mimic_loss([m.float() for m in s], [m.float() for m in t])
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s = [m.requires_grad_() for m in _maps([(2, 3, 4, 4), (2, 3, 2, 2)], seed=3)]
    t = [m.requires_grad_() for m in _maps([(2, 3, 4, 4), (2, 3, 2, 2)], seed=4)]
    assert torch.autograd.gradcheck(lambda a, b: mimic_loss([a, b], t), tuple(s))
    mimic_loss(s, t).backward()
    assert all(m.grad is None for m in t) and all(torch.isfinite(m.grad).all() for m in s)


def test_identical_features_give_zero_and_levels_add_up():
    s, t = _maps(LEVELS, seed=5), _maps(LEVELS, seed=6)
    assert mimic_loss(s, [m.clone() for m in s]).item() == 0.0
    per_level = sum(mimic_loss([a], [b]).item() for a, b in zip(s, t))
    assert mimic_loss(s, t).item() == pytest.approx(per_level, rel=1e-12)


def test_mismatched_levels_are_refused():
    s, t = _maps(LEVELS, seed=7), _maps(LEVELS, seed=8)
    with pytest.raises(UsageError, match=r"student level \(2, 8, 8, 8\) and its teacher level \(2, 4, 8, 8\)"):
        mimic_loss(s, [t[0], t[1][:, :4], t[2]])
    with pytest.raises(UsageError, match="3 student and 2 teacher neck levels"):
        mimic_loss(s, t[:2])


def test_module_reads_neck_features_and_has_no_parameters():
    s = [m.float().requires_grad_() for m in _maps(LEVELS, seed=9)]
    t = [m.float() for m in _maps(LEVELS, seed=10)]
    loss = create_loss("mimic")
    assert loss.hparams() == {"loss_weight": 1.0} and not list(loss.parameters())
    assert loss.tasks == {"object-detection"} and not any(vars(loss.needs).values())
    assert "1×1" in type(loss).__doc__ and "distiller" in type(loss).__doc__
    out = loss(_detector(s), {"logits": None, "neck_features": tuple(t)}, DistillBatch())
    assert set(out) == {"loss", "mimic"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    torch.testing.assert_close(out["loss"], mimic_loss(s, t), rtol=0, atol=0)
    out["loss"].backward()
    assert all(m.grad is not None for m in s)
    weighted = create_loss("mimic", loss_weight=2.5)(_detector(s), _detector(t), DistillBatch())
    torch.testing.assert_close(weighted["loss"], 2.5 * mimic_loss(s, t), rtol=0, atol=0)
    with pytest.raises(UsageError, match="teacher output .* no `neck_features`.*object-detection task"):
        loss(_detector(s), SimpleNamespace(logits=t[0]), DistillBatch())
    with pytest.raises(ValueError, match="loss_weight"):
        create_loss("mimic", loss_weight=-1.0)
