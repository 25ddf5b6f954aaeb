import pytest
import torch

from hfkd.losses import DistillBatch, ImageFeatures, LossContext, create_loss, embed_loss

from .label_free_reference import embed as reference_embed

CONTEXT = LossContext(student_embedding_dim=6, teacher_embedding_dim=4, student_feature_shapes=[(6, 2, 2)],
                      teacher_feature_shapes=[(4, 2, 2)])  # fmt: skip


def _pair(seed: int, shape=(5, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_equation(distance, seed):
    s, t = _pair(seed)
    expected = reference_embed(s.numpy(), t.numpy(), distance)
    assert embed_loss(s, t, distance=distance).item() == pytest.approx(expected, rel=1e-12)
    assert embed_loss(s.float(), t.float(), distance=distance).item() == pytest.approx(expected, rel=1e-5)


def test_pinned_value_zero_for_the_same_direction_and_distances_differ():
    s, t = _pair(2)
    # Pinned from label_free_reference.embed on these seeded vectors.
    assert embed_loss(s, t).item() == pytest.approx(PINNED_COSINE, rel=1e-12)
    assert embed_loss(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert embed_loss(s, 3.0 * s, distance="mse").item() == pytest.approx(0.0, abs=1e-12)
    # On unit vectors the MSE is 2 (1 - cos) / D.
    assert embed_loss(s, t, distance="mse").item() == pytest.approx(2 * embed_loss(s, t).item() / 4, rel=1e-12)


PINNED_COSINE = 1.0379568991442465  # label_free_reference.embed(seed 2 vectors, "cosine")


def test_module_projects_the_student_and_only_the_student_and_projection_get_gradients():
    loss = create_loss("embed", context=CONTEXT, loss_weight=2.0)
    assert tuple(loss.projection.weight.shape) == (4, 6) and loss.hparams() == {
        "distance": "cosine",
        "loss_weight": 2.0,
    }
    g = torch.Generator().manual_seed(3)
    student = ImageFeatures(torch.randn(5, 6, generator=g, requires_grad=True), torch.randn(5, 6, 2, 2, generator=g))
    teacher = ImageFeatures(torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, 4, 2, 2, generator=g))
    out = loss(student, teacher, DistillBatch())
    expected = embed_loss(loss.projection(student.embedding), teacher.embedding)
    assert out["loss"].ndim == 0 and out["loss"].item() == pytest.approx(2.0 * expected.item(), rel=1e-6)
    assert out["embed"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert student.embedding.grad is not None and loss.projection.weight.grad is not None
    assert teacher.embedding.grad is None


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="'cosine' or 'mse'"):
        create_loss("embed", context=CONTEXT, distance="l1")
    with pytest.raises(ValueError, match="loss_weight"):
        create_loss("embed", context=CONTEXT, loss_weight=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        embed_loss(torch.zeros(2, 3), torch.zeros(2, 4))
