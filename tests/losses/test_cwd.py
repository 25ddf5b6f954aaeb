import math

import pytest
import torch
from transformers.modeling_outputs import SemanticSegmenterOutput

from hfkd.losses import DistillBatch, create_loss, cwd_loss
from hfkd.utils.errors import UsageError

from .reference import cwd as reference_cwd


def _maps(shape, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) * scale for _ in range(2))


def test_pinned_value_from_reference_code():
    # Pinned from reference.cwd (float64 NumPy loops over samples and channels) on these seeded 19-class maps, τ=4.
    s, t = _maps((2, 19, 8, 16), 3.0, seed=103)
    assert cwd_loss(s, t, temperature=4.0).item() == pytest.approx(8.978273483832915, rel=1e-12)


@pytest.mark.parametrize(
    "shape,scale,temperature",
    [((2, 3, 4, 4), 1.0, 4.0), ((3, 19, 5, 7), 5.0, 1.0), ((1, 2, 1, 6), 0.3, 2.5), ((4, 1, 3, 3), 2.0, 5.0)],
)
def test_matches_paper_equation(shape, scale, temperature):
    s, t = _maps(shape, scale, seed=sum(shape))
    expected = reference_cwd(s.numpy(), t.numpy(), temperature)
    assert cwd_loss(s, t, temperature=temperature).item() == pytest.approx(expected, rel=1e-10)
    single = cwd_loss(s.float(), t.float(), temperature=temperature)
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = (x.requires_grad_() for x in _maps((2, 3, 3, 4), 2.0, seed=3))
    assert torch.autograd.gradcheck(lambda x: cwd_loss(x, t, temperature=4.0), (s,))
    assert torch.autograd.gradcheck(lambda x: cwd_loss(x, t, temperature=1.0), (s,))
    cwd_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_maps_give_zero_and_a_channel_shift_changes_nothing():
    s, t = _maps((2, 5, 4, 4), 3.0, seed=4)
    assert cwd_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # Each channel's softmax over positions ignores a constant added to that channel's map.
    shifted = s + torch.arange(5, dtype=s.dtype)[None, :, None, None] * 7.0
    assert cwd_loss(shifted, t).item() == pytest.approx(cwd_loss(s, t).item(), rel=1e-10)


def test_each_sample_counts_on_its_own():
    # Channels are normalised within one sample, so the loss of a batch is the mean of its samples' losses.
    s, t = _maps((4, 3, 5, 5), 2.0, seed=5)
    per_sample = [cwd_loss(s[i : i + 1], t[i : i + 1]).item() for i in range(4)]
    assert cwd_loss(s, t).item() == pytest.approx(sum(per_sample) / 4, rel=1e-12)


def test_classifier_logits_and_mismatched_maps_are_refused():
    s, t = _maps((4, 10), 1.0, seed=6)
    with pytest.raises(UsageError, match=r"CWD needs dense \(B, C, H, W\) maps.*got student \(4, 10\)"):
        cwd_loss(s, t)
    s, t = _maps((2, 19, 8, 8), 1.0, seed=7)
    with pytest.raises(UsageError, match=r"student maps \(2, 19, 8, 8\) and teacher maps \(2, 19, 4, 4\) differ"):
        cwd_loss(s, t[:, :, ::2, ::2])
    with pytest.raises(UsageError, match=r"student maps \(2, 19, 8, 8\) and teacher maps \(2, 10, 8, 8\) differ"):
        cwd_loss(s, t[:, :10])


def test_module_output_gradients_and_hyperparameters():
    s, t = _maps((2, 6, 4, 5), 2.0, seed=8, dtype=torch.float32)
    s.requires_grad_()
    loss = create_loss("cwd")
    assert loss.hparams() == {"temperature": 4.0, "loss_weight": 3.0}
    assert loss.tasks == {"semantic-segmentation", "object-detection"} and loss.paper.arxiv_id == "2011.13256"
    assert not any(vars(loss.needs).values()) and not list(loss.parameters())
    out = loss(SemanticSegmenterOutput(logits=s), SemanticSegmenterOutput(logits=t), DistillBatch())
    assert set(out) == {"loss", "cwd"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    # The module is its function times loss_weight, bit for bit.
    torch.testing.assert_close(out["cwd"], cwd_loss(s, t, temperature=4.0).detach(), rtol=0, atol=0)
    torch.testing.assert_close(out["loss"], 3.0 * cwd_loss(s, t, temperature=4.0), rtol=0, atol=0)
    out["loss"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    cooler = create_loss("cwd", temperature=1.0, loss_weight=5.0)(s, t, DistillBatch())
    assert not math.isclose(cooler["cwd"].item(), out["cwd"].item())
    torch.testing.assert_close(cooler["loss"], 5.0 * cwd_loss(s, t, temperature=1.0), rtol=0, atol=0)


@pytest.mark.parametrize("name,bad", [("temperature", 0.0), ("loss_weight", -1.0)])
def test_rejects_out_of_range_hyperparameters(name, bad):
    with pytest.raises(ValueError, match=name):
        create_loss("cwd", **{name: bad})
