import math

import pytest
import torch

from hfkd.losses import DistillBatch, create_loss, pkt_loss

from .feature_inputs import output_with as _output
from .feature_reference import pkt as reference_pkt


def _embeds(b, d_student, d_teacher, scale, seed):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, d_student, generator=g, dtype=torch.float64) * scale
    return student, torch.randn(b, d_teacher, generator=g, dtype=torch.float64) * scale


def test_pinned_value_from_reference_code():
    # Pinned from feature_reference.pkt (float64 NumPy loops) on these seeded embeddings.
    s, t = _embeds(64, 64, 256, 1.0, seed=103)
    assert pkt_loss(s, t).item() == pytest.approx(0.00014301134642073717, rel=1e-12)


@pytest.mark.parametrize("b,d_student,d_teacher,scale", [(8, 10, 10, 1.0), (5, 16, 64, 10.0), (16, 3, 7, 0.01)])
def test_matches_paper_equation(b, d_student, d_teacher, scale):
    s, t = _embeds(b, d_student, d_teacher, scale, seed=b + d_student)
    expected = reference_pkt(s.numpy(), t.numpy())
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    single = pkt_loss(s.float(), t.float())
    assert single.dtype == torch.float32 and single.item() == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_gradient_matches_finite_differences_and_skips_teacher():
    s, t = _embeds(4, 5, 6, 2.0, seed=3)
    s, t = s.requires_grad_(), t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, t), (s,))
    pkt_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_identical_embeddings_give_zero():
    s, _ = _embeds(8, 10, 10, 3.0, seed=0)
    assert pkt_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-15)


def test_mixed_precision_autocast_does_not_lower_the_precision():
    s, t = (x.float() for x in _embeds(16, 32, 64, 1.0, seed=5))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = pkt_loss(s, t)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(pkt_loss(s, t).item(), rel=1e-6)


def test_half_precision_inputs_compute_in_float32():
    s, t = _embeds(8, 10, 12, 1.0, seed=5)
    s, t = s.bfloat16(), t.bfloat16()
    out = pkt_loss(s, t)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference_pkt(s.double().numpy(), t.double().numpy()), rel=1e-4)


def test_module_uses_pooled_last_map_and_only_the_student_gets_gradients():
    g = torch.Generator().manual_seed(7)
    s = [torch.randn(6, 8, 8, 8, generator=g).relu().requires_grad_() for _ in range(2)]
    t = [torch.randn(6, 16, 4, 4, generator=g).relu().requires_grad_() for _ in range(2)]
    loss = create_loss("pkt")
    assert loss.needs.hidden_states and loss.paper.arxiv_id == "1803.10837"
    out = loss(_output(s), _output(t), DistillBatch())
    assert set(out) == {"loss", "pkt"} and out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    # mdistiller's pooled_feat: the global average of the last feature map; FEAT_WEIGHT 30000.
    expected = pkt_loss(s[-1].mean(dim=(2, 3)), t[-1].mean(dim=(2, 3)))
    assert out["pkt"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(30000.0 * out["pkt"].item(), rel=1e-6)
    out["loss"].backward()
    assert s[0].grad is None and torch.isfinite(s[1].grad).all() and all(m.grad is None for m in t)
    assert loss.hparams() == {"feat_weight": 30000.0}
    weighted = create_loss("pkt", feat_weight=1.0)(_output(s), _output(t), DistillBatch())["loss"]
    assert not math.isclose(weighted.item(), out["loss"].item())
    assert weighted.item() == pytest.approx(out["pkt"].item(), rel=1e-6)


def test_depends_on_batch_composition():
    # Batch-level by design: the distributions run over the other samples of the micro-batch.
    s, t = _embeds(8, 6, 9, 1.0, seed=9)
    halves = (pkt_loss(s[:4], t[:4]).item() + pkt_loss(s[4:], t[4:]).item()) / 2
    assert not math.isclose(pkt_loss(s, t).item(), halves, rel_tol=1e-3)


def test_module_on_tiny_resnet_pair(student, teacher):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    student_out = student(pixel_values=pixels, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(pixel_values=pixels, output_hidden_states=True)
    out = create_loss("pkt")(student_out, teacher_out, DistillBatch())
    assert math.isfinite(out["loss"].item()) and out["loss"].item() > 0
    out["loss"].backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_rejects_negative_weight():
    with pytest.raises(ValueError, match="feat_weight"):
        create_loss("pkt", feat_weight=-1.0)
